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


def estimate(values, clusters=None, weights=None) -> Estimate:
    """Mean, standard error and 95% interval of ``values`` (clustered by ``clusters`` if given)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        raise ValueError("no values to estimate a mean from")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    mean = float((w * x).sum() / w.sum())
    groups = _groups(clusters, n)
    c = int(groups.max()) + 1
    if c < 2:
        return Estimate(mean, None, None, None, n, c)
    # Each cluster's summed (weighted) deviation; for unclustered equal weights this is the usual s / sqrt(n).
    sums = np.bincount(groups, weights=w * (x - mean), minlength=c)
    se = math.sqrt(c / (c - 1) * float((sums ** 2).sum())) / float(w.sum())
    half = _t(c - 1) * se
    return Estimate(mean, se, mean - half, mean + half, n, c)


@dataclass(frozen=True)
class Difference:
    diff: float                 # mean(b) - mean(a) over the shared units
    low: float
    high: float
    p: float                    # two-sided, paired bootstrap
    n: int
    clusters: int


def paired(a, b, clusters=None, *, resamples: int = 10_000, seed: int = 0) -> Difference:
    """``mean(b) - mean(a)`` over paired units, with a cluster bootstrap interval and p-value."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or len(a) == 0:
        raise ValueError("paired scores need the same, non-empty set of units")
    d = b - a
    groups = _groups(clusters, len(d))
    c = int(groups.max()) + 1
    sums = np.bincount(groups, weights=d, minlength=c)
    counts = np.bincount(groups, minlength=c).astype(float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, c, size=(resamples, c))
    boot = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    diff = float(d.mean())
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
