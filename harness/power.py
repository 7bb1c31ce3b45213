"""How many haystack draws per cell and training seeds per mixture an experiment needs to detect a
difference, from a pilot's variance components (`harness plan`).

The model, for the paired difference ``d`` between two models on one cell (length l, depth j,
haystack draw k), averaged over a mixture's R training seeds::

    d = delta + (s_B - s_A) + u_lk + e_ljk     s ~ (0, seed / R) per model, u ~ (0, draw), e ~ (0, cell)

``u`` is what one haystack region (a length and a draw: every depth reads it) shares, ``s`` what
a model's training seeds share across all cells (the mean of R of them). The mean over L lengths,
D depths and K draws has

    se^2 = 2 seed / R + draw / (L K) + cell / (L K D)        (a mixture against the base: 1 seed / R)

and the harness's paired test (harness.uncertainty: clusters = haystack regions, t with C - 1
degrees of freedom) rejects at level a when |mean / se| > t(C - 1). Its power against ``delta`` is
the noncentral t's tail. With m comparisons against one reference, Holm's first step tests at a / m:
planning every comparison at that level is what guarantees each its power under Holm.

A pilot gives the components by the method of moments (one-way ANOVA over regions for ``draw`` and
``cell``, the spread of seed means for ``seed``). With one run only there is no difference to
measure: its score's components are doubled (two independent models with the same spread), an upper
bound when two models' scores are positively correlated, as they are on the same cells.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
TARGET = 0.8


@dataclass(frozen=True)
class Components:
    """Variance components of a cell-level paired difference (see the module's model)."""

    cell: float        # within a haystack region
    draw: float        # between regions, beyond what ``cell`` explains
    seed: float        # between one model's training seeds: the variance of a seed's mean score
    depths: int        # cells per region in the pilot (D)
    source: str        # how they were measured: "paired: A - B", "one run, doubled", ...
    seed_known: bool = True   # False: the pilot had one seed, ``seed`` is assumed 0
    draw_upper: bool = False  # True: one draw per length in the pilot, ``draw`` holds length effects too

    def se(self, lengths: int, depths: int, draws: int, seeds: int, sides: int = 2) -> tuple[float, float]:
        """(standard error of the mean difference, its degrees of freedom) at this design, ``sides``
        of the comparison being trained with ``seeds`` seeds each (2: two mixtures; 1: a mixture
        against the base). The regions' part has L K - 1 degrees of freedom, each side's seeds R - 1,
        combined as the harness's test combines them (Welch-Satterthwaite, harness.uncertainty.paired);
        with one seed the seeds' spread is in the error but not estimable by the test."""
        regions = self.draw / (lengths * draws) + self.cell / (lengths * draws * depths)
        parts = [(regions, lengths * draws - 1)]
        if seeds > 1 and self.seed > 0:
            parts += [(self.seed / seeds, seeds - 1)] * sides
        total = regions + sides * self.seed / seeds
        welch = sum(v * v / max(d, 1) for v, d in parts)
        tested = sum(v for v, _ in parts)
        return math.sqrt(total), (tested * tested / welch if welch > 0 else float(lengths * draws - 1))


def components(values, regions, replicates=None, *, doubled: bool = False, seed_sides: int = 1,
               source: str = "") -> Components:
    """Components of ``values`` (cell-level differences, or one run's scores with ``doubled``),
    ``regions`` naming each value's haystack region (length, draw) and ``replicates`` its training
    seed (None: one). A cell seen under several seeds is averaged over them for ``draw`` and ``cell``;
    ``seed_sides``: how many seeded models the values' seed means vary with (2 for differences of two
    seeded mixtures, their seeds paired by index)."""
    values = np.asarray(values, dtype=float)
    reps = list(replicates) if replicates is not None else [None] * len(values)
    by_seed = defaultdict(list)
    for v, r in zip(values, reps):
        by_seed[r].append(v)
    seed_means = np.array([np.mean(v) for v in by_seed.values()])
    # The seed means' spread also holds the seed-by-cell noise over N cells: an upper bound on ``seed``.
    seed = float(np.var(seed_means, ddof=1)) / seed_sides if len(seed_means) > 1 else 0.0
    # Average over seeds per (region, position within it): the seed-free cell values.
    cells = defaultdict(list)
    count = defaultdict(int)
    for v, g, r in zip(values, regions, reps):
        cells[(g, count[(g, r)])].append(v)
        count[(g, r)] += 1
    groups = defaultdict(list)
    for (g, _), vs in cells.items():
        groups[g].append(float(np.mean(vs)))
    sizes = [len(v) for v in groups.values()]
    depths = int(round(np.mean(sizes))) if sizes else 1
    n, c = sum(sizes), len(groups)
    within = sum(float(np.sum((np.asarray(v) - np.mean(v)) ** 2)) for v in groups.values())
    cell = within / (n - c) if n > c else 0.0
    # Regions are (length, draw): with several draws of a length, their means' spread within each
    # length is the draws' own; with one draw per length, length effects count too (an upper bound).
    by_length = defaultdict(list)
    for g, v in groups.items():
        by_length[g[0] if isinstance(g, tuple) else g].append(float(np.mean(v)))
    repeated = [m for m in by_length.values() if len(m) > 1]
    if repeated:
        dev = sum(float(np.sum((np.asarray(m) - np.mean(m)) ** 2)) for m in repeated)
        between = dev / sum(len(m) - 1 for m in repeated)
    else:
        means = [m[0] for m in by_length.values()]
        between = float(np.var(means, ddof=1)) if c > 1 else 0.0
    draw = max(0.0, between - cell / depths)
    k = 2.0 if doubled else 1.0
    return Components(cell=k * cell, draw=k * draw, seed=seed, depths=depths, source=source,
                      seed_known=len(seed_means) > 1, draw_upper=not repeated)


def power(delta: float, se: float, dof: float, alpha: float = ALPHA) -> float:
    """The two-sided t-test's power against ``delta`` at standard error ``se`` (noncentral t)."""
    from scipy.stats import nct, t

    if se <= 0:
        return 1.0 if delta != 0 else alpha
    dof = max(float(dof), 1.0)
    crit = float(t.ppf(1 - alpha / 2, dof))
    nc = abs(delta) / se
    return float(nct.sf(crit, dof, nc) + nct.cdf(-crit, dof, nc))


@dataclass(frozen=True)
class Plan:
    draws: int            # haystack draws per cell (--samples)
    seeds: int            # training seeds per mixture (--seeds)
    power: float          # at the planned draws and seeds
    se: float
    level: float          # the per-comparison level planned for (alpha / m: Holm's first step)
    reached: bool         # False: the limits below were hit before the target power


def plan(comp: Components, delta: float, lengths: int, depths: int, *, comparisons: int = 1, sides: int = 2,
         alpha: float = ALPHA, target: float = TARGET, cost=None, max_draws: int = 64,
         max_seeds: int = 16) -> Plan:
    """The cheapest (draws, seeds) whose power reaches ``target`` for each of ``comparisons``
    comparisons at Holm's level. ``cost(draws, seeds)``: its price (default: draws x seeds, the number
    of evaluated cells per mixture); seeds only where the pilot measured their spread or one is
    enough."""
    cost = cost or (lambda k, r: k * r)
    level = alpha / max(comparisons, 1)
    best, fallback = None, None
    for r in range(1, max_seeds + 1):
        for k in range(1, max_draws + 1):
            se, dof = comp.se(lengths, depths, k, r, sides)
            p = power(delta, se, dof, level)
            candidate = Plan(k, r, p, se, level, p >= target)
            if fallback is None or p > fallback.power:
                fallback = candidate
            if p >= target:
                if best is None or cost(k, r) < cost(best.draws, best.seeds):
                    best = candidate
                break   # more draws at this seed count only cost more
    return best or fallback
