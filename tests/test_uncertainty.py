"""Error bars and paired comparisons (harness.uncertainty, harness.reports.paired) on synthetic
stores whose truth is known."""

import numpy as np
import pytest

from harness import uncertainty
from harness.reports import compare, paired


def test_unclustered_interval_is_the_textbook_one():
    x = np.array([0.2, 0.4, 0.9, 1.0, 0.5, 0.7])
    est = uncertainty.estimate(x)
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert est.mean == pytest.approx(x.mean()) and est.stderr == pytest.approx(se)
    assert est.high - est.mean == pytest.approx(2.5706 * se, rel=1e-4)  # t(5) at 97.5%
    assert uncertainty.estimate([0.5]).stderr is None  # one unit: nothing to estimate a spread from


def test_clusters_are_the_units_and_weights_give_the_ratio_estimator():
    # Identical values inside each cluster carry no more information than one value per cluster.
    per_cluster = np.array([0.1, 0.5, 0.8, 0.4])
    est = uncertainty.estimate(np.repeat(per_cluster, 5), clusters=np.repeat(np.arange(4), 5))
    one_each = uncertainty.estimate(per_cluster)
    assert est.clusters == 4 and est.stderr == pytest.approx(one_each.stderr)
    weighted = uncertainty.estimate([1.0, 3.0], weights=[3, 1])
    assert weighted.mean == pytest.approx(1.5)


def test_intervals_shrink_as_units_grow():
    rng = np.random.default_rng(0)
    widths = [uncertainty.estimate(rng.binomial(1, 0.6, n)).stderr for n in (25, 100, 400)]
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4, rel=0.25)  # 1 / sqrt(n)


def _needle(rng, p, lengths=12, depths=10, shift=None):
    """A needle store: per-length difficulty shared by both runs (the clusters), binary cells."""
    rows = []
    for i in range(lengths):
        for d in range(depths):
            rows.append({"suite": "needle", "key": f"needle/{i}/{d}", "length": 1000 * (i + 1), "depth": d,
                         "score": float(rng.random() < p[i]), "scores": {"paper": 0.0}})
    return rows


def test_a_known_difference_is_found_and_covered():
    rng = np.random.default_rng(1)
    covered, found = 0, 0
    for trial in range(60):
        base = rng.uniform(0.2, 0.7, 12)
        a = _needle(rng, base)
        b = _needle(rng, base + 0.25)   # true difference of the means: 0.25
        d = uncertainty.paired([r["score"] for r in a], [r["score"] for r in b],
                               clusters=[r["length"] for r in a], resamples=2000, seed=trial)
        covered += d.low <= 0.25 <= d.high
        found += d.p < 0.05 and d.diff > 0
    assert found >= 55          # power: 12 lengths x 10 depths detect +0.25 nearly always
    assert covered >= 50        # the 95% interval covers the truth in most trials


def test_a_against_itself_is_no_detectable_difference():
    rng = np.random.default_rng(2)
    false = 0
    for trial in range(100):
        base = rng.uniform(0.2, 0.8, 12)
        a, b = _needle(rng, base), _needle(rng, base)   # same model, another sample seed
        d = uncertainty.paired([r["score"] for r in a], [r["score"] for r in b],
                               clusters=[r["length"] for r in a], resamples=2000, seed=trial)
        false += d.p < 0.05
    assert false <= 10          # about 5% expected; the cluster bootstrap must not be overconfident


def test_holm_adjustment():
    assert uncertainty.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_report_comparison_verdicts_and_sentence(tmp_path):
    rng = np.random.default_rng(3)
    base = rng.uniform(0.3, 0.6, 12)
    runs = [compare.Run("ref", tmp_path, {}, _needle(rng, base)),
            compare.Run("same", tmp_path, {}, _needle(rng, base)),
            compare.Run("good", tmp_path, {}, _needle(rng, np.minimum(base + 0.35, 1.0)))]
    found = {c.run: c for c in paired.compare(compare.Collection(runs), "ref")}
    assert found["good"].verdict == "better" and found["good"].p_adjusted < 0.05
    assert found["same"].verdict == "no detectable difference"
    sentence = paired.summary_sentence(list(found.values()), "ref")
    assert "good: better on needle mean" in sentence and "same: no detectable difference" in sentence
