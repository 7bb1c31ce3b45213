"""The needle-in-a-haystack suite: a depth x length grid of retrieval probes.

A cell is one (length, depth). Its prompt comes from the protocol's builder (needle_prompt.py):
``exact`` makes the whole prompt ``length`` tokens of the model's tokenizer (within 1%), the needle
at ``depth`` percent of the haystack's tokens backed up to the previous sentence end; ``reference``
follows the paper's reference code rule for rule. The answer (at most ``max_new_tokens``) is
generated after the prompt. This module owns the grid, the config, scoring and the results.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from harness import effective_length as effective, uncertainty
from harness.backends import DECODINGS, Request, Sampling, generation_config_sampling
from harness.errors import UserError
from harness.tasks import base, needle_prompt, needle_variants, scoring
from harness.tasks.haystack import Haystack
from harness.tasks.needle_prompt import Prompt
from harness.values import format_length, parse_depths, parse_lengths

log = logging.getLogger(__name__)
SPEC_PATH = Path(__file__).with_name("needle.yaml")
NAME = "needle"
SCORERS = ("generate", "loglik", "both")
PROTOCOLS = ("reference", "exact")
ROPE_STATES = ("carry", "reset")   # dynamic RoPE between cells: the reference's carried cache, or reset


def load_spec(path: Path = SPEC_PATH) -> dict:
    return yaml.safe_load(path.read_text())


@dataclass(frozen=True)
class Cell:
    suite: str
    key: str
    length: int
    depth: float
    sample: int = 0   # which of the config's independent draws (haystack start; a variant's keys and values)


def tree_spans(todo: list[Cell], reserved: int = 0) -> list[tuple[int, int]]:
    """How the prefix tree computes a draw's prompts (a model of it; the tokens are not built here),
    as (tokens reused, prompt tokens) per cell. The prompts share the haystack up to each needle
    (at its depth in the length less ``reserved``, the tokens the reference protocol leaves free),
    so the prompt whose needle sits furthest is computed whole and each other from its needle on;
    at depth 0 the needle opens every length's prompt, so the longest is computed whole and the
    shorter ones continue it."""
    spans: dict[str, tuple[int, int]] = {}
    for draw in {c.sample for c in todo}:
        cells = [c for c in todo if c.sample == draw]
        at = {c.key: int(max(c.length - reserved, 0) * c.depth / 100) for c in cells}
        trunk = max(cells, key=lambda c: (at[c.key], c.length)).key
        top = [c for c in cells if c.depth == 0]
        longest_top = max(top, key=lambda c: c.length).key if top else None
        for c in cells:
            if c.key in (trunk, longest_top):
                spans[c.key] = (0, c.length)
            elif c.depth == 0:
                spans[c.key] = (c.length - 1, c.length)
            else:
                spans[c.key] = (at[c.key], c.length)
    return [spans[c.key] for c in todo]


def grid_cells(config: "NeedleConfig") -> list[Cell]:
    """A config's cells, draw by draw, length by length, depth by depth (pure data: no tokenizer)."""
    prefix = f"{NAME}/{config.variant_name}" if config.variant else NAME
    return [Cell(NAME, f"{prefix}/{length}/{depth:g}" + (f"/s{k}" if k else ""), length, depth, k)
            for k in range(config.samples) for length in config.lengths for depth in config.depths]


class RopeCarry:
    """The longest sequence a dynamic RoPE's state has seen, carried from cell to cell as the reference's
    is: transformers 4.3x's dynamic NTK cache grows to the longest sequence a forward sees and never
    shrinks, and its grid runs every cell in one process, lengths ascending, then depths. A cell's
    prompt is prefilled with the base for ``max(seen, its length)``; decoding then feeds back each new
    token but the last (``generate`` stops after choosing it), and an EOS, chosen, is not fed."""

    def __init__(self, stored: dict[str, int] | None = None):
        self.seen = 0
        self.stored = stored or {}   # key -> what a cell already in the store reached (a resumed run)

    def skip(self, key: str) -> None:
        """A cell run before: its stored reach carries on."""
        self.seen = max(self.seen, self.stored.get(key, 0))

    def after(self, prompt: int, new_tokens: int, budget: int, target: int = 0) -> dict:
        """Account for a cell that prefilled ``prompt`` tokens, decoded ``new_tokens`` of ``budget`` (fewer:
        it stopped at EOS) and scored a ``target`` of that many tokens; returns what its result records."""
        fed = new_tokens if new_tokens < budget else max(budget - 1, 0)
        prefill = max(self.seen, prompt)
        self.seen = max(prefill, prompt + fed, prompt + max(target - 1, 0))
        return {"rope_prefill": prefill, "rope_seen": self.seen}


PER_LENGTH_COLUMNS = 12   # grids with at most this many lengths get a report column per length (RULER, HELMET)
EFFECTIVE_AT = 0.85       # RULER's threshold for an effective length (Llama-2-7B's score at 4K there)


def effective_length(per_length: dict[int, float], threshold: float = EFFECTIVE_AT) -> int:
    """The longest length whose mean score, and every shorter length's, is at least ``threshold``
    (0: not even the shortest): RULER's effective length on this grid (harness.effective_length,
    where NoLiMa's and the intervals are too)."""
    return effective.of(per_length, effective.Rule("ruler", threshold))


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
    variant: dict | None = None   # a needle_variants/*.yaml spec (None: the paper's single needle)
    scorer: str = "generate"      # generate | loglik (teacher-forced answer, no decoding) | both
    seed: int = 0                 # variants: keys, values and the other needles' depths
    protocol: str = "exact"       # reference: the paper's code, rule for rule | exact: prompt = length tokens
    reference_answer: str = ""    # what the reference heatmap scores against (whitespace words)
    reference_buffer: int = 0     # reference: tokens the haystack leaves free of L (its final_context_length_buffer)
    skip_leading_eos: bool = False  # EOS before any other token does not stop decoding (ChatML models; README)
    samples: int = 1              # independent draws per (length, depth); draw 0 is the haystack's start
    rope_state: str | None = None  # dynamic RoPE: carry (the reference's, never shrinks) or reset; None: the
                                   # protocol's, and once bound, None unless the model's RoPE is dynamic
    decoding: str = "greedy"      # greedy, or generation_config: the model's own (resolved when bound)
    sampling: dict | None = None  # what the model's generation_config asked for (None: greedy)
    length_tokenizer: str | None = None   # lengths in this tokenizer's tokens (its identity); None: the model's

    @property
    def variant_name(self) -> str | None:
        return self.variant["name"] if self.variant else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lengths"], d["depths"] = list(self.lengths), list(self.depths)
        for key, value in UNRECORDED.items():   # settings newer than the earliest configs, at their old rule
            if d[key] == value:
                del d[key]
        return d


# Config fields recorded only when they differ from what runs did before they existed, so the config
# (and its hash: a run directory's identity) of a run that does not use them stays what it was.
UNRECORDED = {"rope_state": None, "decoding": "greedy", "sampling": None, "length_tokenizer": None}


def protocol_for(spec: dict, preset: str | None, protocol: str | None, variant: str | None, chat: bool) -> str:
    """The protocol a grid runs: --protocol, else the preset's (a variant or a chat prompt: exact only)."""
    if protocol is not None and protocol not in PROTOCOLS:
        raise UserError(f"--protocol: unknown {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if protocol == "reference" and (variant or chat):
        raise UserError(f"--protocol reference: the paper's single needle and base prompt only; "
                        f"{'--chat' if chat else f'--variant {variant}'} runs with --protocol exact")
    grid = spec["presets"].get(preset or spec["default_preset"], {})
    return protocol or ("exact" if variant or chat else grid.get("protocol", spec["protocol"]))


def haystack_spec(spec: dict, variant: str | None, requested: str | None) -> str:
    """The haystack a grid uses: --haystack, else the variant's own, else the suite's default."""
    if variant is None:
        return requested or spec["haystack"]
    own = needle_variants.load(variant).get("haystack")
    if own and requested and requested != own:
        raise UserError(f"--haystack: the {variant} variant hides its needle in {own!r} (as RULER's "
                        f"{needle_variants.load(variant).get('ruler_task')}); drop --haystack or pick another variant")
    return requested or own or spec["haystack"]


def resolve_config(*, preset: str | None, lengths: str | None, depths: str | None, chat: bool,
                   haystack: Haystack, max_new_tokens: int | None = None, spec: dict | None = None,
                   variant: str | None = None, seed: int = 0, scorer: str = "generate",
                   protocol: str | None = None, samples: int = 1, rope_state: str | None = None,
                   decoding: str = "greedy", length_tokenizer: str | None = None) -> NeedleConfig:
    """CLI flags over the preset over the YAML spec (and the variant's spec)."""
    spec = spec or load_spec()
    presets = spec["presets"]
    name = preset or spec["default_preset"]
    if name not in presets:
        raise UserError(f"--preset: unknown {name!r} for suite needle; known: {', '.join(presets)}")
    grid = presets[name]
    vspec = None
    prompt = spec["chat_prompt"] if chat else spec["prompt"]
    if variant is not None:
        vspec = needle_variants.load(variant)
        if vspec["name"] == "distractor":  # the paper's needle, question and prompt, plus look-alikes
            vspec.update({k: spec[k] for k in ("needle", "question", "answer", "reference_answer")}, prompt=prompt)
        prompt = needle_variants.template(vspec)
    if scorer not in SCORERS:
        raise UserError(f"--scorer: unknown {scorer!r}; known: {', '.join(SCORERS)}")
    protocol = protocol_for(spec, name, protocol, variant, chat)
    _check_choices(rope_state, decoding)
    default_new = vspec["max_new_tokens"] if vspec else spec["max_new_tokens"]
    new_tokens = default_new if max_new_tokens is None else max_new_tokens
    if new_tokens < 1:
        raise UserError(f"--max-new-tokens: {new_tokens} must be at least 1")
    if not 1 <= samples <= 1000:
        raise UserError(f"--samples: {samples} must be between 1 and 1000")
    if vspec and vspec["name"] != "distractor":
        # Each asked value is 7 digits (a token each for SmolLM2-like tokenizers) or a UUID: leave room.
        per_value = 40 if vspec["type_v"] == "uuids" else 10
        need = per_value * int(vspec["num_queries"]) * int(vspec["num_values"])
        if new_tokens < need:
            raise UserError(f"--max-new-tokens: {new_tokens} cannot hold the {variant} variant's "
                            f"{int(vspec['num_queries']) * int(vspec['num_values'])} values; use at least {need}")
    reference = protocol == "reference"
    grid_depths = parse_depths(depths or str(grid["depths"]))
    if reference:  # the reference's np.round(np.linspace(0, 100, 10)).astype(int): 0, 11, 22, ...
        grid_depths = sorted({int(np.round(d)) for d in grid_depths})
    rules = spec["reference"] if reference else spec
    return NeedleConfig(
        lengths=tuple(parse_lengths(lengths or str(grid["lengths"]))),
        depths=tuple(grid_depths),
        needle=spec["needle"], question=spec["question"], answer=spec["answer"],
        prompt=prompt, chat=chat,
        max_new_tokens=int(new_tokens),
        # a variant's own rule, if set
        stop_at_eos=chat or bool((vspec or {}).get("stop_at_eos", rules["stop_at_eos"])),
        sentence_ends=spec["sentence_ends"],
        haystack=haystack.describe(), variant=vspec, seed=seed, scorer=scorer,
        protocol=protocol, reference_answer=spec["reference_answer"],
        reference_buffer=int(spec["reference"]["buffer"]) if reference else 0,
        skip_leading_eos=bool(rules.get("skip_leading_eos", False)) and not chat, samples=int(samples),
        rope_state=rope_state, decoding=decoding, length_tokenizer=_length_tokenizer(length_tokenizer, chat),
    )


def _length_tokenizer(spec: str | None, chat: bool) -> str | None:
    """--length-tokenizer's identity (the embedded name, org/name@commit or an absolute path): what
    the run's config records, and what bind loads."""
    if spec is None:
        return None
    if chat:
        raise UserError("--length-tokenizer: base prompts only; a chat template is each model's own, so its "
                        "prompts cannot be byte-identical across models (leave out --chat)")
    from harness import models

    return models.identity(spec, models.locate(spec, "--length-tokenizer"))


def rope_rule(config: NeedleConfig) -> str:
    """Dynamic RoPE between cells: --dynamic-rope, else the protocol's (tasks/needle.yaml)."""
    spec = load_spec()
    rules = spec["reference"] if config.protocol == "reference" else spec
    return config.rope_state or rules.get("rope_state", "reset")


def _check_choices(rope_state: str | None, decoding: str) -> None:
    if rope_state is not None and rope_state not in ROPE_STATES:
        raise UserError(f"--dynamic-rope: unknown {rope_state!r}; known: {', '.join(ROPE_STATES)}")
    if decoding not in DECODINGS:
        raise UserError(f"--decoding: unknown {decoding!r}; known: {', '.join(DECODINGS)}")


@dataclass(frozen=True)
class Options:
    haystack: str | None = base.option("--haystack", "kjv (default, public domain), pg-essays (the paper's), "
                                       "or a text file/dir.")
    variant: str | None = base.option("--variant", "Needle variant (RULER): passkey, multikey, multivalue, "
                                      "multiquery, distractor.")
    scorer: str = base.option("--scorer", "Needle: generate (greedy answer, scored), loglik (teacher-forced "
                              "answer probability, no decoding) or both.", "generate")
    chat: bool = base.option("--chat", "Wrap the prompt in the tokenizer's chat template instead of the paper's "
                             "base prompt.", False)
    max_new_tokens: int | None = base.option("--max-new-tokens", "Greedy tokens to generate (suite default: 50).",
                                             kind=int)
    samples: int = base.option("--samples", "Needle: K independent draws per cell (the haystack starts at a "
                               "seeded line for the paper's needle; new keys and values for a variant); the "
                               "heatmap shows each cell's mean, the intervals count the draws.", 1)
    protocol: str | None = base.option("--protocol", "Needle prompt construction: reference (the paper's code, "
                                       "rule for rule) or exact (the prompt is exactly the length's tokens); "
                                       "default: the preset's.")
    haystack_join: str | None = base.option("--haystack-join", "Needle: how a haystack of several files "
                                            "(pg-essays, a directory) is joined: raw (the reference: each "
                                            "file as read, no separator) or paragraphs (stripped, a blank "
                                            "line between); default: the protocol's (reference: raw).")
    dynamic_rope: str | None = base.option("--dynamic-rope", "Needle, dynamic RoPE only: carry (the "
                                           "reference: the rotary base keeps the longest sequence seen, "
                                           "cell after cell in grid order) or reset (each prompt from the "
                                           "loaded state); default: the protocol's (reference: carry).")
    decoding: str = base.option("--decoding", "Needle: greedy, or generation_config (what the model's "
                                "generation_config asks for, as the reference's generate() follows it: "
                                "sampling, seeded per cell, if it sets do_sample).", "greedy")
    length_tokenizer: str | None = base.option("--length-tokenizer", "Needle: measure lengths, cuts and depths in "
                                               "this tokenizer's tokens (PATH|ORG/NAME|smollm2-135m) and give the "
                                               "model the text: models with different tokenizers then read "
                                               "byte-identical prompts, paired by `harness compare`.")


class NeedleSuite(base.Suite):
    name = NAME
    Options = Options
    figures = ("heatmap",)
    report_pages = ("heatmaps", "differences")
    compared_settings = ("lengths", "depths", "samples", "haystack.name", "prompt", "protocol", "scorer", "variant")

    @classmethod
    def prepare(cls, grid: base.Grid, options: Options) -> tuple[NeedleConfig, Haystack]:
        from harness.tasks import haystack as haystacks

        spec = load_spec()
        protocol = protocol_for(spec, grid.preset, options.protocol, options.variant, options.chat)
        join = options.haystack_join or ("raw" if protocol == "reference" else "paragraphs")
        hay = haystacks.load(haystack_spec(spec, options.variant, options.haystack), join=join)
        cfg = resolve_config(preset=grid.preset, lengths=grid.lengths, depths=grid.depths, chat=options.chat,
                             haystack=hay, max_new_tokens=options.max_new_tokens, spec=spec, variant=options.variant,
                             scorer=options.scorer, seed=grid.seed, protocol=options.protocol,
                             samples=options.samples, rope_state=options.dynamic_rope, decoding=options.decoding,
                             length_tokenizer=options.length_tokenizer)
        return cfg, hay

    @classmethod
    def bind(cls, prepared: tuple[NeedleConfig, Haystack], loaded) -> "NeedleSuite":
        config, hay = prepared
        # The RoPE rule between cells, recorded where it matters: only a dynamic RoPE carries state.
        dynamic = "dynamic" in str((loaded.info.get("rope_parameters") or {}).get("rope_type", ""))
        config = replace(config, rope_state=rope_rule(config) if dynamic else None)
        if config.decoding == "generation_config":   # what the model asks for, recorded in the config
            drawn = generation_config_sampling(loaded.model, loaded.path)
            config = replace(config, sampling=drawn.to_dict() if drawn else None)
        return cls(config, hay, loaded.tokenizer)

    @classmethod
    def run_dir_tag(cls, options: Options) -> str | None:
        return options.variant   # a variant is another task: its runs get their own directories

    @classmethod
    def cost(cls, prepared: tuple[NeedleConfig, Haystack]) -> base.Cost:
        """The grid's cells, their prefill spans as the hf backend's prefix tree computes them (the
        reference protocol leaves its buffer free: nonzero only there) and the decoding."""
        config = prepared[0]
        cells = grid_cells(config)
        return base.Cost(tuple(cells), tuple(tree_spans(cells, config.reference_buffer)),
                         0 if config.scorer == "loglik" else config.max_new_tokens)

    @staticmethod
    def protocol(config: dict) -> str | None:
        return config.get("protocol") or None

    @staticmethod
    def summary(results: list[dict], manifest: dict) -> list[base.Row]:
        rows = [r for r in results if r.get("suite") == NAME]
        if not rows:
            return []
        # A variant is another task: its own report column, never averaged with the paper's needle.
        variant = base.variant_of(manifest, NAME)
        metric = next(iter(rows[0].get("scores", {})), "score") if variant else "paper"
        label = f"needle ({variant})" if variant else "needle"
        # Cells of one length and draw share their haystack: those are the independent units of the
        # overall mean. Within a length the draws are (the depths, with one draw).
        out = [base.Row.of(label, "all cells", f"{metric} (mean)",
                           uncertainty.estimate([r["score"] for r in rows],
                                                clusters=[base.haystack_region(r) for r in rows],
                                                replicates=base.replicates(rows)),
                           column=f"{label} mean", how="clustered by length and draw")]
        lengths = sorted({r["length"] for r in rows if r.get("length") is not None})
        for length in lengths:
            mine = [r for r in rows if r.get("length") == length]
            draws = {r.get("sample", 0) for r in mine}
            est = uncertainty.estimate([r["score"] for r in mine],
                                       clusters=[r.get("sample", 0) if len(draws) > 1 else r["depth"] for r in mine],
                                       replicates=base.replicates(mine))
            out.append(base.Row.of(label, format_length(length), f"{metric} (mean)", est,
                                   how="over draws" if len(draws) > 1 else "over depths",
                                   column=f"{label} {format_length(length)}" if len(lengths) <= PER_LENGTH_COLUMNS else None,
                                   compared=False))  # a handful of depths per length: shown, not tested
        return out + base.effective_rows(label, rows)   # RULER's and NoLiMa's, with intervals

    @staticmethod
    def expected_cells(config: dict) -> int | None:
        try:
            return len(config["lengths"]) * len(config["depths"]) * int(config.get("samples") or 1)
        except (KeyError, TypeError):
            return None

    @staticmethod
    def paired_units(results: list[dict], manifest: dict) -> dict:
        variant = base.variant_of(manifest, NAME)
        label = f"needle ({variant})" if variant else "needle"
        # Paired by the prompt's content (runs stored before cells recorded it: by their keys).
        return {f"{label} mean": {r.get("item_sha256") or r["key"]: (r["score"], base.haystack_region(r))
                                  for r in results if r.get("suite") == NAME}}

    @staticmethod
    def effective_cells(results: list[dict], manifest: dict) -> dict:
        variant = base.variant_of(manifest, NAME)
        label = f"needle ({variant})" if variant else "needle"
        return {label: base.length_cells([r for r in results if r.get("suite") == NAME])}

    @staticmethod
    def score_label(manifest: dict) -> str:
        cfg = manifest.get("config", {}).get("suites", {}).get(NAME, {})
        variant = (cfg.get("variant") or {}).get("name")
        if cfg.get("scorer") == "loglik":
            what = "answer probability (teacher-forced, per token)"
        elif variant and variant != "distractor":
            what = "RULER string match"
        else:
            what = "paper score (the reference heatmap's)"
        return f"{what} · {cfg.get('protocol', 'exact')} protocol"

    def __init__(self, config: NeedleConfig, haystack: Haystack, tokenizer: Any):
        self.config = config
        self.haystack = haystack
        self.tok = tokenizer
        # The prompt builder of the config's protocol (needle_prompt.py): exact or reference, in the
        # --length-tokenizer's tokens when one is given.
        measure = None
        if config.length_tokenizer:
            from harness import models

            measure = models.read_tokenizer(models.locate(config.length_tokenizer, "--length-tokenizer"),
                                            "--length-tokenizer")
        self.prompts = needle_prompt.builder(config, haystack, tokenizer, measure)
        self._sampling = Sampling(**config.sampling) if config.sampling else None

    # -- grid ---------------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        return grid_cells(self.config)

    def sample(self, cell: Cell) -> needle_variants.Sample:
        """The cell's needles (the asked one first, at the cell's depth) and expected answer."""
        if not self.config.variant:
            return needle_variants.Sample([self.config.needle], [cell.depth], {"question": self.config.question},
                                          [self.config.answer])
        return needle_variants.make_sample(self.config.variant, cell.depth, f"{self.config.seed}/{cell.key}")

    @property
    def new_tokens(self) -> int:
        return 0 if self.config.scorer == "loglik" else self.config.max_new_tokens

    def prefill_spans(self, todo: list[Cell]) -> list[tuple[int, int]]:
        return tree_spans(todo, self.prompts.reserved)

    def warn(self, max_positions: int) -> None:
        beyond = [n for n in self.config.lengths if n + self.config.max_new_tokens > max_positions]
        if beyond:
            log.warning("lengths %s (plus up to %d answer tokens) go past the model's %d positions; they run "
                        "anyway: where retrieval breaks is what the grid shows",
                        ", ".join(format_length(n) for n in beyond), self.config.max_new_tokens, max_positions)

    def check(self) -> None:
        """Refuse a grid whose shortest length cannot hold the prompt and every needle."""
        shortest = min(self.cells(), key=lambda c: c.length)
        self.prompts.check(shortest, self.sample(shortest))

    def build(self, cell: Cell, sample: needle_variants.Sample | None = None) -> Prompt:
        return self.prompts.build(cell, sample or self.sample(cell))

    def _sentence_end_tokens(self) -> set[int]:
        """The reference protocol's period tokens (its builder's rule; tests read it here)."""
        return self.prompts.sentence_end_tokens()

    # -- scoring --------------------------------------------------------------------------------
    def score(self, output: str, sample: needle_variants.Sample | None = None) -> dict[str, float]:
        if self.config.variant:
            return needle_variants.score(self.config.variant, output, sample)
        return {
            "paper": scoring.reference_recall(output, self.config.reference_answer),
            "word_recall": scoring.word_recall(output, self.config.needle),
            "rouge1_f": scoring.rouge1_f(output, self.config.needle),
            "exact": scoring.exact(output, self.config.answer),
        }

    def request(self, cell: Cell) -> tuple[Request, needle_variants.Sample, Prompt]:
        """The backend request for ``cell``: greedy decoding, and the answer to score if loglik is on."""
        sample = self.sample(cell)
        prompt = self.build(cell, sample)
        scorer = self.config.scorer
        target = ()
        if scorer in ("loglik", "both"):
            target = tuple(self.tok(" " + self.target_text(sample), add_special_tokens=False)["input_ids"])
        new_tokens = 0 if scorer == "loglik" else self.config.max_new_tokens
        sampling = self._sampling.for_cell(self.config.seed, cell.key) if self._sampling else None
        return (Request(tuple(prompt.ids), new_tokens, self.config.stop_at_eos, target,
                        skip_leading_eos=self.config.skip_leading_eos, sampling=sampling), sample, prompt)

    def target_text(self, sample: needle_variants.Sample) -> str:
        """What a perfect answer says: the needle sentence (RULER variants: the values, listed)."""
        if self.config.variant and self.config.variant_name != "distractor":
            return ", ".join(sample.expected) + "."
        return sample.needles[0]

    def result(self, cell: Cell, sample: needle_variants.Sample, prompt: Prompt, gen) -> dict:
        scores = self.score(gen.text, sample) if self.config.scorer != "loglik" else {}
        if gen.target_logprobs is not None:
            lp = gen.target_logprobs
            scores.update(answer_prob=math.exp(sum(lp) / len(lp)), loglik=sum(lp), answer_tokens=len(lp))
        # The heatmap's score: the generation metric, or with --scorer loglik the answer's mean
        # per-token probability (geometric mean: exp of the mean log-probability).
        main = scores["answer_prob"] if self.config.scorer == "loglik" else next(iter(scores.values()))
        result = {
            "suite": NAME, "key": cell.key, "length": cell.length, "tokens": len(prompt.ids),
            "depth": cell.depth, "depth_actual": prompt.depth_actual, "score": main,
            "scores": scores, "output": gen.text, "new_tokens": gen.new_tokens,
            "seconds": round(gen.seconds, 3), "reused_tokens": gen.reused_tokens,
            # The item's content hash: runs pair a cell by it (harness compare), so cells whose prompts
            # differ (another tokenizer, another grid) are never taken for the same item.
            "item_sha256": hashlib.sha256(prompt.item.encode()).hexdigest()[:16],
        }
        if gen.peak_gib is not None:
            result["peak_gib"] = round(gen.peak_gib, 3)
        if gen.prefill_chunk is not None:   # it fitted only with a smaller chunk (harness.oom)
            result["prefill_chunk"] = gen.prefill_chunk
        if self.config.variant:
            result.update(variant=self.config.variant_name, **sample.to_dict())
        if self.config.samples > 1:
            result["sample"] = cell.sample
        return result

    def evaluate(self, cell: Cell, backend) -> dict:
        ((_, result),) = self.run([cell], backend)
        return result

    def run(self, todo: list[Cell], backend):
        """Every prompt goes to the backend at once, which shares their common prefixes (a grid's
        cells at one length share the haystack up to the shallower needle). A prompt that does not
        fit in memory is stored as oom and the others go to the backend again (harness.oom)."""
        from harness import oom   # torch: not for a report that only reads the store

        if getattr(backend, "dynamic_rope", False) and rope_rule(self.config) == "carry":
            yield from self._run_carried(todo, backend)
            return
        pending = dict(enumerate(self.request(cell) for cell in todo))
        while pending:
            order, failed = list(pending), []
            try:
                for index, gen in backend.generate_many([pending[i][0] for i in order]):
                    _, sample, prompt = pending.pop(order[index])
                    yield todo[order[index]], self.result(todo[order[index]], sample, prompt, gen)
            except oom.CellOutOfMemory as exc:
                failed = [(order[index], oom.record(todo[order[index]], exc)) for index in exc.indices]
            for i, record in failed:
                del pending[i]
                yield todo[i], record

    def _run_carried(self, todo: list[Cell], backend):
        """Dynamic RoPE carried as the reference's (:class:`RopeCarry`): the cells one at a time in grid
        order, each request told the longest sequence the rotary state saw before it; a resumed run
        carries on from what its stored cells reached. Each result records its prefill's length for
        the base (``rope_prefill``) and the reach after it (``rope_seen``)."""
        from harness import oom

        carry = RopeCarry(self._stored_reach())
        wanted = {c.key for c in todo}
        for cell in self.cells():
            if cell.key not in wanted:
                carry.skip(cell.key)
                continue
            req, sample, prompt = self.request(cell)
            req = replace(req, rope_seen=carry.seen)
            try:
                ((_, gen),) = list(backend.generate_many([req]))
            except oom.CellOutOfMemory as exc:
                yield cell, oom.record(cell, exc)
                continue
            result = self.result(cell, sample, prompt, gen)
            result.update(carry.after(len(req.ids), gen.new_tokens, req.max_new_tokens, len(req.target)))
            yield cell, result

    def _stored_reach(self) -> dict[str, int]:
        """key -> ``rope_seen`` of this suite's cells already in the run directory's store."""
        from harness.store import RunStore

        store = RunStore(Path(self.run_dir)) if self.run_dir is not None else None
        if store is None or not store.results_path.is_file():
            return {}
        return {r["key"]: int(r["rope_seen"]) for r in store.results() if r.get("suite") == NAME and "rope_seen" in r}
