"""Effective length with an interval: the longest tested context length at which a model still
does the task, by two published rules, with a bootstrap interval clustered by haystack draw and a
paired comparison of two runs. Pure numpy over cells (key, length, haystack region, score, seed).

The two rules (docs/statistics.md says the same, with the reasons):

- **RULER** (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your Long-Context
  Language Models?", section 4, "Effective context size", and the NVIDIA/RULER README's table):
  a fixed threshold, Llama-2-7B's own score at 4K (85.6 on RULER's 13-task average), and "the
  maximum length exceeding the threshold". Here the threshold is 0.85 on the suite's [0, 1] score
  (:data:`RULER`), a length passes when its mean score is at least the threshold, and the
  effective length is the longest tested length that passes **with every shorter tested length
  passing too**. RULER's words leave open whether a pass after a failure counts; its published
  table never has one (every model's scores fall with length), and on a grid of a few depths such
  a pass is noise more often than a recovered ability. 0: not even the shortest length passes.
- **NoLiMa** (Modarressi et al., 2025, "NoLiMa: Long-Context Evaluation Beyond Literal Matching",
  and the adobe-research/NoLiMa README's table): "the longest context where a model maintains at
  least 85% of its base score", the base score being "a model's accuracy on the task at short
  contexts (250, 500, and 1K)". How the three are combined is not written; the table settles it:
  Jamba 1.5 Mini has a base score of 92.4 and 76.3 at 1K, which a mean of the three cannot give
  (250 and 500 would have to average 100.45%), while every model's base score is at least its 1K
  score. The base score is the best (the maximum) of the short lengths' scores. Here: the highest
  per-length mean among the tested lengths up to 1K (1,024 tokens; the shortest tested length
  alone when none is that short, and the result says so), a threshold of 0.85 x base
  (:data:`NOLIMA`), and the same every-shorter-length rule as RULER's. A base score of 0 gives 0.

The interval is a percentile bootstrap, seeded (the same cells give the same interval). Cells that
share a haystack region (``harness.tasks.base.haystack_region``: a length and a draw) are not
independent, so at each tested length the regions are resampled with replacement and the length's
mean recomputed from the drawn regions' cells; the rule is applied to every resample's per-length
means. A length with a single draw has one region: its cells (the depths) are resampled instead,
which treats them as independent when they share one haystack: that interval is too narrow, and
the result names those lengths (``by_cell``). A pooled model's training seeds are resampled too
(every drawn seed on the same units). The ends of the interval are quantiles of the resampled
lengths (the inverted empirical CDF: each end is a tested length, or 0).

The paired comparison uses the same resampled regions (the same indices at each length, over the
units both runs hold) for both runs, and takes the difference of their effective lengths in each
resample: its percentile interval, and a two-sided p-value as harness.uncertainty.paired computes
one (twice the share of resamples on the far side of zero, ties counting for both sides, plus one:
identical runs give 1). The suites' comparisons join this family for Holm's adjustment
(harness.reports.paired).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, NamedTuple

import numpy as np

from harness.values import format_length

CONFIDENCE = 0.95
SHORT = 1024          # NoLiMa's base score: its 250, 500 and 1K lengths
RESAMPLES = 2_000     # an interval's
PAIRED_RESAMPLES = 10_000   # a comparison's, as harness.uncertainty.paired's
_EPS = 1e-9           # a mean computed as a sum and a division still passes its threshold exactly


class Cell(NamedTuple):
    key: str              # the unit: the same key in two runs is the same prompt
    length: int           # tested context length (tokens)
    region: Hashable      # the haystack region it read: cells sharing one are one cluster
    score: float
    seed: Hashable = None  # a pooled model's training seed (None: one model)


@dataclass(frozen=True)
class Rule:
    kind: str             # "ruler": a fixed threshold | "nolima": a fraction of the base score
    level: float

    @property
    def kind_name(self) -> str:
        return "RULER" if self.kind == "ruler" else "NoLiMa"

    @property
    def label(self) -> str:
        return f"RULER {self.level:g}" if self.kind == "ruler" else f"NoLiMa {self.level:.0%}"

    def column(self, prefix: str) -> str:
        """The report column of ``prefix``'s (a suite's label) effective length by this rule."""
        return f"{prefix} effective length ({self.label})"

    def describe(self) -> str:
        if self.kind == "ruler":
            return f"RULER: longest length with every mean up to it >= {self.level:g}"
        return f"NoLiMa: longest length with every mean up to it >= {self.level:.0%} of the base score"


RULER = Rule("ruler", 0.85)
NOLIMA = Rule("nolima", 0.85)
RULES = (RULER, NOLIMA)


def text(tokens: float, signed: bool = False) -> str:
    """A length as the tables show it: ``4K``, ``none`` for 0; signed (``+4K``, ``−2K``, ``0``) for a difference."""
    n = int(round(tokens))
    if not signed:
        return format_length(n) if n else "none"
    return ("+" if n > 0 else "−") + format_length(abs(n)) if n else "0"


def base_lengths(lengths) -> list[int]:
    """The tested lengths NoLiMa's base score is the best of: those up to 1K, else the shortest."""
    short = [n for n in lengths if n <= SHORT]
    return short or [min(lengths)]


def _apply(rule: Rule, means: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(effective length per row of ``means`` (resamples x lengths), NoLiMa's base score per row or None)."""
    base = None
    if rule.kind == "ruler":
        floor = np.full(len(means), rule.level)
    else:
        base = means[:, np.isin(lengths, base_lengths(lengths))].max(axis=1)
        floor = np.where(base > 0, rule.level * base, np.inf)
    passed = means >= floor[:, None] - _EPS
    run = np.cumprod(passed, axis=1).sum(axis=1)   # passing lengths before the first failure
    return np.where(run > 0, lengths[np.maximum(run - 1, 0)], 0), base


def of(per_length: dict[int, float], rule: Rule = RULER) -> int:
    """The effective length of per-length mean scores (no interval)."""
    lengths = np.array(sorted(per_length))
    means = np.array([[per_length[n] for n in lengths]], dtype=float)
    return int(_apply(rule, means, lengths)[0][0])


@dataclass(frozen=True)
class _Layout:
    """The units a bootstrap resamples: per tested length, its unit keys and each one's cluster."""

    lengths: np.ndarray
    keys: tuple[tuple[str, ...], ...]
    groups: tuple[np.ndarray, ...]       # cluster index of each key
    counts: tuple[np.ndarray, ...]       # cells per cluster
    by_cell: tuple[int, ...]             # lengths with one region: their cells are the clusters


def _layout(runs: list[list[Cell]]) -> _Layout:
    """The keys every seed of every run holds, grouped by length and clustered by region."""
    held, where = None, {}
    for cells in runs:
        seeds: dict = {}
        for c in cells:
            seeds.setdefault(c.seed, set()).add(c.key)
            where.setdefault(c.key, (c.length, c.region))
        for keys in seeds.values() or [set()]:   # a run without cells shares none
            held = set(keys) if held is None else held & keys
    held = held or set()
    lengths = sorted({where[k][0] for k in held})
    keys, groups, counts, by_cell = [], [], [], []
    for length in lengths:
        mine = tuple(sorted(k for k in held if where[k][0] == length))
        single = len({where[k][1] for k in mine}) < 2
        index: dict = {}
        g = np.array([index.setdefault(k if single else where[k][1], len(index)) for k in mine], dtype=np.int64)
        keys.append(mine)
        groups.append(g)
        counts.append(np.bincount(g, minlength=len(index)).astype(float))
        if single and len(mine) > 1:
            by_cell.append(length)
    return _Layout(np.array(lengths, dtype=np.int64), tuple(keys), tuple(groups), tuple(counts), tuple(by_cell))


def _sums(layout: _Layout, cells: list[Cell]) -> list[np.ndarray]:
    """Per length: (seeds x clusters) summed scores of one run on the layout's units."""
    score = {(c.seed, c.key): float(c.score) for c in cells}
    seeds = sorted({c.seed for c in cells}, key=repr)
    out = []
    for keys, g, n in zip(layout.keys, layout.groups, layout.counts):
        rows = [np.bincount(g, weights=[score[(s, k)] for k in keys], minlength=len(n)) for s in seeds]
        out.append(np.stack(rows))
    return out


def _means(layout: _Layout, sums: list[np.ndarray], picks: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """(resamples x lengths) means: the clusters ``picks`` draws at each length, each seed counted
    as ``weights`` (resamples x seeds) says."""
    cols = []
    for s, n, p in zip(sums, layout.counts, picks):
        total = np.einsum("sbc,bs->b", s[:, p], weights)
        cols.append(total / (n[p].sum(axis=1) * weights.sum(axis=1)))
    return np.stack(cols, axis=1)


def _whole(layout: _Layout, seeds: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Every cluster and seed once: the point estimate's picks and weights."""
    return [np.arange(len(n))[None, :] for n in layout.counts], np.ones((1, seeds))


def _seed_weights(rng, seeds: int, resamples: int) -> np.ndarray:
    if seeds < 2:
        return np.ones((resamples, 1))
    return rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=resamples).astype(float)


def _ends(values: np.ndarray) -> tuple[int, int]:
    q = np.quantile(values, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2], method="inverted_cdf")
    return int(q[0]), int(q[1])


@dataclass(frozen=True)
class Interval:
    rule: Rule
    length: int                  # the point estimate, in tokens (0: not even the shortest length)
    low: int
    high: int
    n: int                       # cells
    clusters: int                # haystack regions (and cells at the lengths of one region)
    seeds: int
    by_cell: tuple[int, ...]     # lengths with one draw: their cells were resampled (too narrow)
    base: float | None = None    # NoLiMa's base score
    base_from: tuple[int, ...] = ()   # the lengths it is the best of
    resamples: int = RESAMPLES
    lengths: int = 0             # tested lengths

    def text(self) -> str:
        """``4K [2K, 8K]``."""
        return f"{text(self.length)} [{text(self.low)}, {text(self.high)}]"

    @property
    def how(self) -> str:
        """What the interval resampled, for a row's ``how``."""
        seeds = f", {self.seeds} seeds" if self.seeds > 1 else ""
        if self.by_cell and len(self.by_cell) == self.lengths:
            return (f"bootstrap over cells ({self.resamples:,} resamples{seeds}): one draw per length, whose "
                    f"cells share their haystack, so too narrow")
        out = f"bootstrap over haystack regions ({self.clusters} clusters, {self.resamples:,} resamples{seeds})"
        if self.by_cell:
            out += f"; one draw at {', '.join(text(n) for n in self.by_cell)}: cells resampled there (too narrow)"
        return out


def estimate(cells: list[Cell], rule: Rule = RULER, *, resamples: int = RESAMPLES, seed: int = 0) -> Interval | None:
    """One run's effective length by ``rule`` with its bootstrap interval (module docstring); None
    without cells."""
    layout = _layout([cells])
    if not len(layout.lengths):
        return None
    sums = _sums(layout, cells)
    seeds = len(sums[0])
    point, base = _apply(rule, _means(layout, sums, *_whole(layout, seeds)), layout.lengths)
    rng = np.random.default_rng(seed)
    picks = [rng.integers(0, len(n), size=(resamples, len(n))) for n in layout.counts]
    boot, _ = _apply(rule, _means(layout, sums, picks, _seed_weights(rng, seeds, resamples)), layout.lengths)
    low, high = _ends(boot)
    return Interval(rule, int(point[0]), low, high, sum(len(k) for k in layout.keys),
                    sum(len(n) for n in layout.counts), seeds, layout.by_cell,
                    None if base is None else float(base[0]),
                    tuple(base_lengths(layout.lengths.tolist())) if base is not None else (), resamples,
                    len(layout.lengths))


@dataclass(frozen=True)
class Change:
    """``b``'s effective length minus ``a``'s, paired on the units both hold."""

    rule: Rule
    a: int
    b: int
    diff: int
    low: int
    high: int
    p: float
    n: int
    clusters: int
    seeds: int                   # training seeds of the better-replicated side
    by_cell: tuple[int, ...]

    @property
    def method(self) -> str:
        out = f"paired bootstrap (effective length), {self.clusters} clusters"
        if self.seeds > 1:
            out += f" + {self.seeds} seeds resampled"
        if self.by_cell:
            out += f"; cells resampled at {', '.join(text(n) for n in self.by_cell)} (one draw)"
        return out


def paired(a: list[Cell], b: list[Cell], rule: Rule = RULER, *, resamples: int = PAIRED_RESAMPLES,
           seed: int = 0) -> Change | None:
    """``b - a`` in effective length on the cells both hold, the same regions resampled for both;
    None when they share no cell."""
    layout = _layout([a, b])
    if not len(layout.lengths):
        return None
    sa, sb = _sums(layout, a), _sums(layout, b)
    ea = int(_apply(rule, _means(layout, sa, *_whole(layout, len(sa[0]))), layout.lengths)[0][0])
    eb = int(_apply(rule, _means(layout, sb, *_whole(layout, len(sb[0]))), layout.lengths)[0][0])
    rng = np.random.default_rng(seed)
    picks = [rng.integers(0, len(n), size=(resamples, len(n))) for n in layout.counts]
    boot = [_apply(rule, _means(layout, s, picks, _seed_weights(rng, len(s[0]), resamples)), layout.lengths)[0]
            for s in (sa, sb)]
    d = boot[1] - boot[0]
    low, high = _ends(d)
    p = min(1.0, 2 * (min((d <= 0).sum(), (d >= 0).sum()) + 1) / (resamples + 1))   # all ties: 1
    return Change(rule, ea, eb, eb - ea, low, high, float(p), sum(len(k) for k in layout.keys),
                  sum(len(n) for n in layout.counts), max(len(sa[0]), len(sb[0])), layout.by_cell)
