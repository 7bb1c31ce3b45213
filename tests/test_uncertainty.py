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
    every = paired.compare(compare.Collection(runs), "ref")
    found = {c.run: c for c in every if c.column == "needle mean"}
    assert found["good"].verdict == "better" and found["good"].p_adjusted < 0.05
    assert found["same"].verdict == "no detectable difference"
    sentence = paired.summary_sentence(every, "ref")
    assert "good: better on needle mean" in sentence and "same: no detectable difference" in sentence


def test_identical_seeds_add_nothing_and_a_seed_spread_widens_the_interval():
    rng = np.random.default_rng(4)
    x = rng.binomial(1, 0.5, 40).astype(float)
    one = uncertainty.estimate(x)
    same = uncertainty.estimate(np.tile(x, 2), clusters=np.tile(np.arange(40), 2), replicates=[0] * 40 + [1] * 40)
    assert same.stderr == pytest.approx(one.stderr) and same.n == 80 and same.clusters == 40
    shifted = np.concatenate([x, np.clip(x + 0.3, 0, 1)])
    spread = uncertainty.estimate(shifted, clusters=np.tile(np.arange(40), 2), replicates=[0] * 40 + [1] * 40)
    alone = uncertainty.estimate(shifted, clusters=np.tile(np.arange(40), 2))
    assert spread.stderr > alone.stderr
    # Two seeds leave one degree of freedom for their spread: a wide t interval, honestly.
    assert (spread.high - spread.low) / 2 > 2.5 * spread.stderr


def _seeded(rng, base, effect, seeds, sigma):
    """(seeds x units) binary scores: each training seed shifts every unit by its own N(0, sigma)."""
    return np.array([(rng.random(len(base)) < np.clip(base + effect + rng.normal(0, sigma), 0, 1)).astype(float)
                     for _ in range(seeds)])


def test_paired_with_seeds_counts_their_spread():
    """A mixture trained with 3 seeds against a one-seed base: the interval must cover the
    difference a new seed would see on average, which the units alone cannot tell."""
    rng = np.random.default_rng(5)
    covered = covered_units_only = 0
    trials = 80
    for trial in range(trials):
        base = rng.uniform(0.2, 0.7, 200)
        a = (rng.random(200) < base).astype(float)
        b = _seeded(rng, base, 0.1, 3, sigma=0.08)
        truth = float(np.mean(np.clip(base + 0.1, 0, 1) - a))  # expected over seeds, given the base's draw
        d = uncertainty.paired(a, b, resamples=1000, seed=trial)
        assert d.replicates == 3
        covered += d.low <= truth <= d.high
        units = uncertainty.paired(a, b.mean(axis=0), resamples=1000, seed=trial)
        covered_units_only += units.low <= truth <= units.high
    assert covered >= 0.88 * trials
    assert covered_units_only < covered   # ignoring the seeds is overconfident


def test_pooled_seeds_in_a_report_and_difference_heatmap_noise(tmp_path):
    rng = np.random.default_rng(6)
    base = rng.uniform(0.3, 0.6, 12)
    ref = compare.Run("base", tmp_path, {}, _needle(rng, base))
    parts = [compare.Run(f"mix-s{k}", tmp_path, {}, _needle(rng, base)) for k in range(2)]
    pooled = compare.Run.pooled("mix", parts)
    assert pooled.label == "mix (2 seeds)" and len(pooled.results) == 2 * len(ref.results)
    assert {r["replicate"] for r in pooled.results} == {0, 1} and pooled.replicates() == parts
    good = compare.Run.pooled("good", [compare.Run(f"good-s{k}", tmp_path, {}, _needle(rng, np.minimum(base + 0.5, 1)))
                                       for k in range(2)])
    col = compare.Collection([ref, pooled, good])
    found = {c.run: c for c in paired.compare(col, "base") if c.column == "needle mean"}
    assert "2 seeds" in found["mix"].method and found["mix"].verdict == "no detectable difference"
    values, widths = compare.tables(col)
    assert widths.at["mix", "needle mean"] > 0
    lengths, cells = paired.within_noise(ref, ref)
    assert len(lengths) == 12 and len(cells) == 120      # a run against itself: every difference is noise
    lengths, _ = paired.within_noise(ref, good)
    assert len(lengths) <= 3                              # +0.5 on every cell: most lengths are not noise
    # One draw and one seed per cell: a cell has no interval of its own and follows its length.
    lengths, cells = paired.within_noise(ref, good.parts[0])
    assert cells == {(r["length"], r["depth"]) for r in ref.results if r["length"] in lengths}


def test_needle_intervals_shrink_as_draws_per_cell_grow():
    """The needle summary's interval (clusters: length x draw) narrows as --samples K grows."""
    from harness import tasks

    rng = np.random.default_rng(7)
    p = rng.uniform(0.3, 0.8, 5)   # per-length retrieval rate
    widths = []
    for k in (1, 4, 16):
        rows = [{"suite": "needle", "key": f"needle/{i}/{d}/s{s}", "length": 1000 * (i + 1), "depth": d, "sample": s,
                 "score": float(rng.random() < p[i])} for i in range(5) for d in range(5) for s in range(k)]
        overall = tasks.get("needle").summary(rows, {})[0]
        assert overall.n == 25 * k
        widths.append(overall.half_width)
    assert widths[0] > widths[1] > widths[2]
