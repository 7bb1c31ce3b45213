"""The needle-in-a-haystack suite: a depth x length grid of retrieval probes.

A cell is one (length, depth). Its prompt is the paper's template around a haystack cut so that
the whole prompt is ``length`` tokens of the model's tokenizer (within 1%; in practice exact or
off by a token or two where a boundary merges); the needle goes in at ``depth`` percent of the
haystack's tokens, backed up to the previous sentence end. The answer (at most
``max_new_tokens``) is generated after those ``length`` tokens.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError
from harness.tasks import scoring
from harness.tasks.haystack import Haystack
from harness.values import parse_depths, parse_lengths

log = logging.getLogger(__name__)
SPEC_PATH = Path(__file__).with_name("needle.yaml")
NAME = "needle"


def load_spec(path: Path = SPEC_PATH) -> dict:
    return yaml.safe_load(path.read_text())


@dataclass(frozen=True)
class Cell:
    suite: str
    key: str
    length: int
    depth: float


@dataclass(frozen=True)
class NeedleConfig:
    """Everything that determines a needle grid's prompts and scores (saved in the manifest)."""

    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    needle: str
    question: str
    answer: str
    prompt: str
    chat: bool
    max_new_tokens: int
    stop_at_eos: bool
    sentence_ends: str
    haystack: dict

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lengths"], d["depths"] = list(self.lengths), list(self.depths)
        return d


def resolve_config(*, preset: str | None, lengths: str | None, depths: str | None, chat: bool,
                   haystack: Haystack, max_new_tokens: int | None = None, spec: dict | None = None) -> NeedleConfig:
    """CLI flags over the preset over the YAML spec."""
    spec = spec or load_spec()
    presets = spec["presets"]
    name = preset or spec["default_preset"]
    if name not in presets:
        raise UserError(f"--preset: unknown {name!r} for suite needle; known: {', '.join(presets)}")
    grid = presets[name]
    new_tokens = spec["max_new_tokens"] if max_new_tokens is None else max_new_tokens
    if new_tokens < 1:
        raise UserError(f"--max-new-tokens: {new_tokens} must be at least 1")
    return NeedleConfig(
        lengths=tuple(parse_lengths(lengths or str(grid["lengths"]))),
        depths=tuple(parse_depths(depths or str(grid["depths"]))),
        needle=spec["needle"], question=spec["question"], answer=spec["answer"],
        prompt=spec["chat_prompt"] if chat else spec["prompt"], chat=chat,
        max_new_tokens=int(new_tokens), stop_at_eos=chat or bool(spec["stop_at_eos"]),
        sentence_ends=spec["sentence_ends"],
        haystack=haystack.describe(),
    )


@dataclass
class Prompt:
    ids: list[int]
    needle_token: int   # index of the needle's first token in ``ids``
    depth_actual: float  # where the needle landed, percent of the haystack's tokens


class NeedleSuite:
    name = NAME

    def __init__(self, config: NeedleConfig, haystack: Haystack, tokenizer: Any):
        self.config = config
        self.haystack = haystack
        self.tok = tokenizer
        self._hay_text = haystack.text
        self._hay_offsets: list[tuple[int, int]] = []

    # -- grid ---------------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        return [Cell(NAME, f"{NAME}/{length}/{depth:g}", length, depth)
                for length in self.config.lengths for depth in self.config.depths]

    # -- prompt construction ------------------------------------------------------------------
    def _wrap(self, context: str) -> str:
        body = self.config.prompt.format(context=context, question=self.config.question)
        if not self.config.chat:
            return body
        return self.tok.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                            add_generation_prompt=True)

    def _encode(self, text: str, offsets: bool = False):
        # The paper's base prompt goes through the tokenizer as the seed repo does (its default
        # special tokens); a chat-templated prompt already holds its special tokens.
        return self.tok(text, add_special_tokens=not self.config.chat, return_offsets_mapping=offsets)

    @cached_property
    def overhead(self) -> int:
        """Tokens of the prompt that are not haystack: template, question, needle."""
        return len(self._encode(self._wrap(self.config.needle))["input_ids"])

    def _ensure_haystack(self, n_tokens: int) -> None:
        """Tokenize enough haystack (with char offsets) for ``n_tokens``; repeat a short one, once."""
        if len(self._hay_offsets) >= n_tokens + 8:
            return
        n_tokens = max(n_tokens, max(self.config.lengths))  # size for the whole grid at once
        text = self.haystack.text
        chars = min(len(text), max(4096, n_tokens * 8))
        while True:
            enc = self.tok(text[:chars], add_special_tokens=False, return_offsets_mapping=True)
            if len(enc["input_ids"]) >= n_tokens + 8 or chars >= len(text):
                break
            chars = min(len(text), chars * 2)
        have = len(enc["input_ids"])
        if have < n_tokens + 8:
            times = math.ceil((n_tokens + 8) / max(have, 1)) + 1
            log.warning("haystack %s has %d tokens, fewer than the %d a cell needs: repeating it %d times",
                        self.haystack.name, have, n_tokens, times)
            text = "\n\n".join([text] * times)
            enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        self._hay_text = text
        self._hay_offsets = [tuple(o) for o in enc["offset_mapping"]]

    def _context(self, n_hay: int, depth: float) -> tuple[str, int]:
        """The haystack's first ``n_hay`` tokens with the needle inside; returns (context, needle char)."""
        text, offs = self._hay_text, self._hay_offsets
        cut = offs[n_hay - 1][1]
        at = round(n_hay * depth / 100)
        pos = cut
        if at < n_hay:  # depth 100 appends at the very end, as Kamradt's test does
            pos = offs[at][0]
            ends = self.config.sentence_ends
            while pos > 0 and not (text[pos - 1] in ends and text[pos].isspace()):
                pos -= 1
        head, tail = text[:pos].rstrip(), text[pos:cut].lstrip()
        needle = self.config.needle
        if not head:
            return f"{needle} {tail}", 0
        if not tail:
            return f"{head} {needle}", len(head) + 1
        return f"{head} {needle} {tail}", len(head) + 1

    def build(self, cell: Cell) -> Prompt:
        target = cell.length
        n_hay = target - self.overhead
        if n_hay < 16:
            raise UserError(f"--lengths: {target} tokens is too short: the template, question and needle "
                            f"alone take {self.overhead} tokens; use lengths of at least {self.overhead + 16}")
        best = None
        for _ in range(8):  # converge on the exact length: boundaries can merge a token or two
            self._ensure_haystack(n_hay)
            context, needle_char = self._context(n_hay, cell.depth)
            text = self._wrap(context)
            enc = self._encode(text, offsets=True)
            ids = enc["input_ids"]
            if best is None or abs(len(ids) - target) < abs(len(best[1]) - target):
                best = (n_hay, ids, enc["offset_mapping"], text, context, needle_char)
            if len(ids) == target:
                break
            n_hay = max(16, n_hay + target - len(ids))
        n_hay, ids, offsets, text, context, needle_char = best
        start = text.index(context)
        needle_at = start + needle_char
        needle_tok = next(i for i, (a, b) in enumerate(offsets) if b > needle_at)
        context_tok = next(i for i, (a, b) in enumerate(offsets) if b > start)
        depth_actual = 100.0 * (needle_tok - context_tok) / max(1, n_hay)
        return Prompt(ids=list(ids), needle_token=needle_tok, depth_actual=round(min(100.0, max(0.0, depth_actual)), 2))

    # -- scoring --------------------------------------------------------------------------------
    def score(self, output: str) -> dict[str, float]:
        return {
            "paper": scoring.paper_recall(output, self.config.needle),
            "rouge1_f": scoring.rouge1_f(output, self.config.needle),
            "exact": scoring.exact(output, self.config.answer),
        }

    def evaluate(self, cell: Cell, backend) -> dict:
        prompt = self.build(cell)
        gen = backend.generate(prompt.ids, self.config.max_new_tokens, stop_at_eos=self.config.stop_at_eos)
        scores = self.score(gen.text)
        return {
            "suite": NAME, "key": cell.key, "length": cell.length, "tokens": len(prompt.ids),
            "depth": cell.depth, "depth_actual": prompt.depth_actual, "score": scores["paper"],
            "scores": scores, "output": gen.text, "new_tokens": gen.new_tokens,
            "seconds": round(gen.seconds, 3),
        }
