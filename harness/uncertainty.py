"""Error bars and paired comparisons for summary numbers (after Miller, "Adding Error Bars to
Evals", 2024).

- :func:`estimate`: a mean with its standard error and a 95% interval. Units that are not
  independent are *clustered*: the standard error is the cluster-robust one,
  ``sqrt(C / (C - 1) * sum_c (sum_{i in c} (x_i - mean))^2) / n``, and the interval uses Student's
  t with C - 1 degrees of freedom, so a handful of clusters gives an honestly wide interval.
  Weights (tokens per document for the loss) give the ratio estimator's standard error.
- :func:`paired`: the difference of two runs' means on the units both hold, with a percentile
  interval and a two-sided p-value from a paired bootstrap that resamples whole clusters (seeded:
  the same inputs give the same numbers). It makes no normality assumption, which suits bounded
  scores such as the needle's.
- :func:`holm`: Holm's step-down adjustment when one reference is compared with several runs
  (harness.reports.paired turns the adjusted p-values into verdicts).

*Replicates* (training seeds of one mixture, ``harness ablate --seeds N``) are crossed with the
units: every seed is scored on the same cells and questions. Their variance adds to the units':
``se^2 = se_units^2 + s_seeds^2 / R``, where ``se_units`` is the clustered standard error above
computed over all replicates' values (clusters span replicates, so a unit seen R times counts
once) and ``s_seeds^2`` the variance of the R replicates' means (of their mean differences, for a
paired comparison). That counts the seed-by-unit noise twice (slightly conservative); the interval
uses Student's t with Welch-Satterthwaite degrees of freedom, which with two seeds are few: an
honest, wide interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    mean: float
    stderr: float | None        # None: a single unit (or cluster), no spread to estimate
    low: float | None
    high: float | None
    n: int                      # units
    clusters: int               # independent groups the standard error is computed over

    def text(self, digits: int = 3) -> str:
        """``0.740 ± 0.112`` (the half-width of the 95% interval), or the mean alone."""
        if self.low is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {(self.high - self.low) / 2:.{digits}f}"


def _t(dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + CONFIDENCE / 2, dof))


def _groups(clusters, n: int) -> np.ndarray:
    """Cluster labels (any hashable values) as 0..C-1; each unit its own cluster when None."""
    if clusters is None:
        return np.arange(n)
    index: dict = {}
    return np.array([index.setdefault(c, len(index)) for c in clusters], dtype=np.int64)


def _replicate_variance(means) -> tuple[float, int] | None:
    """(variance of the mean over replicates, its degrees of freedom); None for one replicate."""
    means = np.asarray(means, dtype=float)
    if len(means) < 2:
        return None
    return float(means.var(ddof=1)) / len(means), len(means) - 1


def _combined(parts: list[tuple[float, int]]) -> tuple[float, float]:
    """(standard error, Welch-Satterthwaite degrees of freedom) of a sum of independent variances."""
    total = sum(v for v, _ in parts)
    denominator = sum(v * v / dof for v, dof in parts)
    return math.sqrt(total), (total * total / denominator if denominator > 0 else float(max(d for _, d in parts)))


def estimate(values, clusters=None, weights=None, replicates=None) -> Estimate:
    """Mean, standard error and 95% interval of ``values`` (clustered by ``clusters`` if given;
    ``replicates`` labels each value's training seed, crossed with the units: module docstring)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        raise ValueError("no values to estimate a mean from")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    mean = float((w * x).sum() / w.sum())
    groups = _groups(clusters, n)
    c = int(groups.max()) + 1
    parts = []
    if c >= 2:
        # Each cluster's summed (weighted) deviation; for unclustered equal weights this is the usual s / sqrt(n).
        sums = np.bincount(groups, weights=w * (x - mean), minlength=c)
        parts.append((c / (c - 1) * float((sums ** 2).sum()) / float(w.sum()) ** 2, c - 1))
    if replicates is not None:
        reps = _groups(replicates, n)
        r = int(reps.max()) + 1
        means = np.bincount(reps, weights=w * x, minlength=r) / np.bincount(reps, weights=w, minlength=r)
        between = _replicate_variance(means)
        if between is not None:
            parts.append(between)
    if not parts:
        return Estimate(mean, None, None, None, n, c)
    se, dof = _combined(parts)
    half = _t(dof) * se
    return Estimate(mean, se, mean - half, mean + half, n, c)


def stratified(strata: list[Estimate], replicate_means=None) -> Estimate:
    """The unweighted mean of independent strata (the loss suite's domains), each with its own
    estimate computed without replicates; ``replicate_means`` (that mean, per training seed) adds
    the between-seed variance. Strata without a standard error leave the result without one."""
    mean = sum(e.mean for e in strata) / len(strata)
    n, c = sum(e.n for e in strata), sum(e.clusters for e in strata)
    if any(e.stderr is None for e in strata):
        return Estimate(mean, None, None, None, n, c)
    parts = [(e.stderr ** 2 / len(strata) ** 2, e.clusters - 1) for e in strata]
    between = _replicate_variance(replicate_means if replicate_means is not None else [])
    se, dof = _combined(parts + ([between] if between else []))
    half = _t(dof) * se
    return Estimate(mean, se, mean - half, mean + half, n, c)


@dataclass(frozen=True)
class Difference:
    diff: float                 # mean(b) - mean(a) over the shared units
    low: float
    high: float
    p: float                    # two-sided: paired bootstrap (t on the combined stderr with replicates)
    n: int
    clusters: int
    replicates: int = 1         # training seeds of the better-replicated side


def paired(a, b, clusters=None, *, resamples: int = 10_000, seed: int = 0) -> Difference:
    """``mean(b) - mean(a)`` over paired units, with a cluster bootstrap interval and p-value.

    ``a`` and ``b`` are one score per unit, or a (replicates x units) array each: several training
    seeds scored on the same units. Replicates add their between-seed variance (module docstring)
    and the interval and p-value come from Student's t on the combined standard error; without
    replicates they are the bootstrap's own percentiles.
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise ValueError("paired scores need the same, non-empty set of units")
    d = b.mean(axis=0) - a.mean(axis=0)
    groups = _groups(clusters, len(d))
    c = int(groups.max()) + 1
    sums = np.bincount(groups, weights=d, minlength=c)
    counts = np.bincount(groups, minlength=c).astype(float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, c, size=(resamples, c))
    boot = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    diff = float(d.mean())
    between = [v for v in (_replicate_variance(x.mean(axis=1)) for x in (a, b)) if v is not None]
    if between:
        from scipy.stats import t

        parts = ([(float(boot.var(ddof=1)), c - 1)] if c >= 2 else []) + between
        se, dof = _combined(parts)
        half = _t(dof) * se
        p = 1.0 if se == 0 else float(2 * t.sf(abs(diff) / se, dof))
        return Difference(diff, diff - half, diff + half, p, len(d), c, max(len(a), len(b)))
    low, high = (float(v) for v in np.quantile(boot, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2]))
    if not d.any():
        p = 1.0
    else:  # the share of resamples on the other side of zero, both tails (add-one: never exactly 0)
        p = min(1.0, 2 * (min((boot <= 0).sum(), (boot >= 0).sum()) + 1) / (resamples + 1))
    return Difference(diff, low, high, p, len(d), c)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values, in the input's order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
