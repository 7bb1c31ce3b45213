"""The needle suite's prompt builders, one per protocol; each has one job: a cell's prompt tokens.

- ``ExactPrompts`` (``--protocol exact``, ours): the prompt is ``length`` tokens of the model's
  tokenizer, haystack and every needle (a RULER variant's too) inside the template.
- ``ReferencePrompts`` (``--protocol reference``): the seed paper's reference code, rule for rule;
  it leaves ``reference_buffer`` tokens of each length free, so the prompt is not ``length`` tokens.

Both read a haystack draw through ``HaystackTokens``; the suite (tasks/needle.py) picks one with
``builder`` when it is bound to a tokenizer and never asks which protocol it has.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.errors import UserError
from harness.tasks import needle_variants
from harness.tasks.haystack import Haystack

if TYPE_CHECKING:   # needle.py imports this module; the names are for annotations only
    from harness.tasks.needle import Cell, NeedleConfig

log = logging.getLogger(__name__)


@dataclass
class Prompt:
    ids: list[int]
    needle_token: int   # index of the needle's first token in ``ids``
    depth_actual: float  # where the needle landed, percent of the haystack's tokens
    text: str = ""       # the prompt as text, template included
    item: str = ""       # what makes it this item: the prompt before any chat template (hashed per cell)
    needle_char: int = 0  # where the asked needle starts in ``text``


class HaystackTokens:
    """A haystack's draws, tokenized (with char offsets) as far as the grid needs them."""

    def __init__(self, haystack: Haystack, tokenizer: Any, seed: int, longest: int):
        self.haystack, self.tok, self.seed, self.longest = haystack, tokenizer, seed, longest
        self._draws: dict[int, tuple[str, list]] = {}   # draw -> (haystack text, token char offsets)

    def draw_text(self, draw: int) -> str:
        """The haystack of a draw: draw 0 from its start (the reference's); draw k from a seeded line
        start, wrapping around to the beginning."""
        text = self.haystack.text
        if draw == 0:
            return text
        start = random.Random(f"{self.seed}/haystack/{draw}").randrange(len(text))
        line = text.find("\n", start)
        start = line + 1 if line != -1 else 0
        return text[start:] + "\n\n" + text[:start]

    def ensure(self, n_tokens: int, draw: int = 0) -> tuple[str, list[tuple[int, int]]]:
        """Draw ``draw``'s text and token char offsets, at least ``n_tokens`` + 8 of them (sized for
        the whole grid at once); a short haystack is repeated, with one warning."""
        if draw in self._draws and len(self._draws[draw][1]) >= n_tokens + 8:
            return self._draws[draw]
        n_tokens = max(n_tokens, self.longest)
        text = self.draw_text(draw)
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
            text = self.haystack.separator.join([text] * times)   # raw: the reference reads its files again
            enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        self._draws[draw] = (text, [tuple(o) for o in enc["offset_mapping"]])
        return self._draws[draw]


class ExactPrompts:
    """``exact``: the template around a haystack cut so that the whole prompt is ``length`` tokens
    (within 1%; in practice exact or off by a token or two where a boundary merges), each needle at
    its depth percent of the haystack's tokens, backed up to the previous sentence end."""

    reserved = 0   # tokens of each length left free (the prefix-tree model's input)

    def __init__(self, config: "NeedleConfig", hay: HaystackTokens, tokenizer: Any):
        self.config, self.hay, self.tok = config, hay, tokenizer
        self._overheads: dict = {}

    def _wrap(self, context: str, fields: dict) -> str:
        body = self.config.prompt.format(context=context, **fields)
        if not self.config.chat:
            return body
        return self.tok.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                            add_generation_prompt=True)

    def _encode(self, text: str, offsets: bool = False):
        # The paper's base prompt goes through the tokenizer as its reference code does
        # (FranxYao/Long-Context-Data-Engineering: the default special tokens); a chat-templated
        # prompt already holds its special tokens.
        return self.tok(text, add_special_tokens=not self.config.chat, return_offsets_mapping=offsets)

    def overhead(self, sample: needle_variants.Sample) -> int:
        """Tokens of the prompt that are not haystack: template, question, needles."""
        key = tuple(sample.needles), tuple(sorted(sample.fields.items()))
        if key not in self._overheads:
            self._overheads[key] = len(self._encode(self._wrap(" ".join(sample.needles), sample.fields))["input_ids"])
        return self._overheads[key]

    @property
    def _draws_haystack(self) -> bool:
        """The paper's needle draws a haystack start; a RULER variant draws its keys and values."""
        return not self.config.variant or self.config.variant_name == "distractor"

    def _position(self, text: str, offs: list, n_hay: int, depth: float, cut: int) -> int:
        """Char offset for a needle at ``depth`` percent of ``n_hay`` tokens, backed to a sentence end."""
        at = round(n_hay * depth / 100)
        if at >= n_hay:  # depth 100 appends at the very end, as Kamradt's test does
            return cut
        pos = offs[at][0]
        ends = self.config.sentence_ends
        while pos > 0 and not (text[pos - 1] in ends and text[pos].isspace()):
            pos -= 1
        return pos

    def _context(self, text: str, offs: list, n_hay: int, sample: needle_variants.Sample) -> tuple[str, int]:
        """The haystack's first ``n_hay`` tokens with every needle inside; returns (context, asked needle's char)."""
        cut = offs[n_hay - 1][1]
        positions = [self._position(text, offs, n_hay, d, cut) for d in sample.depths]
        out, prev, asked_at = "", 0, 0
        for i in sorted(range(len(positions)), key=lambda i: (positions[i], i)):
            chunk = text[prev:positions[i]].strip()
            if chunk:
                out = f"{out} {chunk}" if out else chunk
            if i == 0:
                asked_at = len(out) + 1 if out else 0
            out = f"{out} {sample.needles[i]}" if out else sample.needles[i]
            prev = positions[i]
        tail = text[prev:cut].strip()
        return (f"{out} {tail}" if tail else out), asked_at

    def check(self, shortest: "Cell", sample: needle_variants.Sample) -> None:
        """Refuse a grid whose shortest length cannot hold the prompt and every needle."""
        overhead = self.overhead(sample)
        if shortest.length - overhead < 16:
            what = f"{len(sample.needles)} needles" if len(sample.needles) > 1 else "needle"
            raise UserError(f"--lengths: {shortest.length} tokens is too short: the template, question and {what} "
                            f"alone take {overhead} tokens; use lengths of at least {overhead + 16}")

    def build(self, cell: "Cell", sample: needle_variants.Sample) -> Prompt:
        target = cell.length
        overhead = self.overhead(sample)
        n_hay = target - overhead
        if n_hay < 16:
            raise UserError(f"--lengths: {target} tokens is too short for {len(sample.needles)} needle(s) and the "
                            f"template ({overhead} tokens); use lengths of at least {overhead + 16}")
        best = None
        for _ in range(8):  # converge on the exact length: boundaries can merge a token or two
            text_, offs = self.hay.ensure(n_hay, cell.sample if self._draws_haystack else 0)
            context, needle_char = self._context(text_, offs, n_hay, sample)
            text = self._wrap(context, sample.fields)
            enc = self._encode(text, offsets=True)
            ids = enc["input_ids"]
            if best is None or abs(len(ids) - target) < abs(len(best[1]) - target):
                best = (n_hay, ids, enc["offset_mapping"], text, context, needle_char)
            if len(ids) == target:
                break
            n_hay = max(16, n_hay + target - len(ids))
        n_hay, ids, offsets, text, context, needle_char = best
        item = self.config.prompt.format(context=context, **sample.fields)
        start = text.index(context)
        needle_at = start + needle_char
        needle_tok = next(i for i, (a, b) in enumerate(offsets) if b > needle_at)
        context_tok = next(i for i, (a, b) in enumerate(offsets) if b > start)
        context_end = next((i for i, (a, b) in enumerate(offsets) if a >= start + len(context)), len(offsets))
        # Where the asked needle landed, in percent of the context's tokens (other needles included).
        depth_actual = 100.0 * (needle_tok - context_tok) / max(1, context_end - context_tok)
        return Prompt(ids=list(ids), needle_token=needle_tok, depth_actual=round(min(100.0, max(0.0, depth_actual)), 2),
                      text=text, item=item, needle_char=needle_at)


class ReferencePrompts:
    """``reference``: the reference code's prompt, rule for rule (eval/needle/needle_in_haystack.py);
    the paper's single needle and base prompt only (resolve_config refuses the rest)."""

    def __init__(self, config: "NeedleConfig", hay: HaystackTokens, tokenizer: Any):
        self.config, self.hay, self.tok = config, hay, tokenizer
        self._contexts: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
        self._periods: set[int] | None = None

    @property
    def reserved(self) -> int:
        """Tokens of each length the haystack leaves free (the reference's final_context_length_buffer)."""
        return self.config.reference_buffer

    def needle_text(self) -> str:
        return f"\n{self.config.needle}\n"  # the reference wraps its needle in newlines

    def sentence_end_tokens(self) -> set[int]:
        """Token ids that are a period, with or without a leading space. The reference hard-codes
        LLaMA's two (29889 ".", 869 "▁."); this is the same rule for any tokenizer's vocabulary."""
        if self._periods is None:
            to_text = self.tok.convert_tokens_to_string
            self._periods = {i for t, i in self.tok.get_vocab().items() if to_text([t]).strip() == "."}
        return self._periods

    def _context(self, length: int, draw: int) -> tuple[list[int], list[int]]:
        """(needle tokens, the haystack's tokens cut for the needle) at ``length``: the same for
        every depth of a length and draw, so computed once for them."""
        key = (length, draw)
        if key not in self._contexts:
            tok = self.tok
            hay_text, offsets = self.hay.ensure(length + 64, draw)
            # A prefix holding 64 tokens more than L encodes to the same first L tokens as the whole text.
            text = hay_text[:offsets[length + 63][1]]
            needle = tok.encode(self.needle_text())
            tokens = tok.encode(tok.decode(tok.encode(text)[:length]))
            budget = length - self.config.reference_buffer
            if len(tokens) + len(needle) > budget:
                tokens = tokens[:budget - len(needle)]
            self._contexts[key] = (needle, tokens)
        return self._contexts[key]

    def check(self, shortest: "Cell", sample: needle_variants.Sample) -> None:
        """Refuse a grid whose shortest length cannot hold the buffer, the needle and some haystack."""
        buffer = self.config.reference_buffer
        need = buffer + len(self.tok.encode(self.needle_text())) + 16
        if shortest.length < need:
            raise UserError(f"--lengths: {shortest.length} tokens is too short for --protocol reference (it "
                            f"leaves {buffer} tokens of each length free, and the needle "
                            f"takes {need - 16 - buffer}); use lengths of at least {need}, "
                            f"or --protocol exact")

    def build(self, cell: "Cell", sample: needle_variants.Sample | None = None) -> Prompt:
        """The haystack's first L tokens (``encode``/``decode`` with the tokenizer's defaults, as it
        calls them), cut to L - buffer - needle tokens; the needle ("\\n" + sentence + "\\n") inserted
        at ``int(len * depth / 100)`` backed up to just after a period token (depth 100: appended);
        the tokens decoded, put in the template, and the prompt tokenized with the defaults.
        """
        tok, length = self.tok, cell.length
        needle, tokens = self._context(length, cell.sample)
        at = len(tokens)
        if cell.depth != 100:
            at = int(len(tokens) * (cell.depth / 100))
            periods = self.sentence_end_tokens()
            while at > 0 and tokens[at - 1] not in periods:
                at -= 1
        context = tok.decode(tokens[:at] + needle + tokens[at:])
        prompt = self.config.prompt.format(context=context, question=self.config.question)
        enc = tok(prompt, return_offsets_mapping=True)
        marker = prompt.index(self.config.needle, prompt.index(context))
        needle_tok = next(i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > marker)
        return Prompt(ids=list(enc["input_ids"]), needle_token=needle_tok,
                      depth_actual=round(100.0 * at / max(1, len(tokens)), 2), text=prompt, item=prompt,
                      needle_char=marker)


class Retokenized:
    """``--length-tokenizer``: a builder working in a reference tokenizer's tokens (lengths, cuts,
    depths), whose prompt text the model's own tokenizer then encodes. Every model given the same
    reference tokenizer reads byte-identical prompts; only their token counts differ."""

    def __init__(self, inner: ExactPrompts | ReferencePrompts, tokenizer: Any):
        self.inner, self.tok = inner, tokenizer

    def __getattr__(self, name: str):   # reserved, check, sentence_end_tokens: the inner builder's
        return getattr(self.inner, name)

    def build(self, cell: "Cell", sample: needle_variants.Sample | None = None) -> Prompt:
        p = self.inner.build(cell, sample)
        enc = self.tok(p.text, return_offsets_mapping=True)
        needle_tok = next(i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > p.needle_char)
        return Prompt(ids=list(enc["input_ids"]), needle_token=needle_tok, depth_actual=p.depth_actual,
                      text=p.text, item=p.item, needle_char=p.needle_char)


BUILDERS = {"exact": ExactPrompts, "reference": ReferencePrompts}


def builder(config: "NeedleConfig", haystack: Haystack, tokenizer: Any,
            measure: Any = None) -> ExactPrompts | ReferencePrompts | Retokenized:
    """The prompt builder of ``config.protocol``, over its own tokenized haystack; with ``measure``
    (a reference tokenizer), lengths are that tokenizer's and the model's encodes the text."""
    hay = HaystackTokens(haystack, measure or tokenizer, config.seed, max(config.lengths))
    inner = BUILDERS[config.protocol](config, hay, measure or tokenizer)
    return Retokenized(inner, tokenizer) if measure is not None else inner
