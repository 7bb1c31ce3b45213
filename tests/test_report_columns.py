"""Report columns a long-context reader expects: a needle column per length (small grids), RULER's
and NoLiMa's effective length per model, and warnings when runs are not comparable."""

from pathlib import Path

import pytest

from harness.tasks import needle
from harness.reports import compare, paired


def _run(name, scores_by_length, depths=(0, 50, 100), lengths_config=None, haystack="kjv"):
    results = [{"suite": "needle", "key": f"needle/{n}/{d}", "length": n, "depth": d, "score": s,
                "scores": {"paper": s}} for n, s in scores_by_length.items() for d in depths]
    config = {"lengths": lengths_config or sorted(scores_by_length), "depths": list(depths), "samples": 1,
              "haystack": {"name": haystack}, "protocol": "reference"}
    manifest = {"model": {"name": name}, "config": {"suites": {"needle": config}}}
    return compare.Run(name, Path(name), manifest, results)


def test_effective_length_is_the_longest_length_that_holds_the_threshold():
    assert needle.effective_length({1024: 0.9, 2048: 0.86, 4096: 0.5, 8192: 0.9}) == 2048  # 8K does not count
    assert needle.effective_length({1024: 0.3}) == 0
    rows = needle.NeedleSuite.summary(_run("m", {1024: 0.9, 2048: 0.2}).results, {"config": {}})
    eff = next(r for r in rows if r.slice == "effective length")
    assert eff.display == "1K [1K, 1K]" and eff.column == "needle effective length (RULER 0.85)"


def test_a_column_per_length_shown_but_only_the_mean_tested():
    """Per-length columns are descriptive (a few depths each: a verdict per length would be a small-n
    test repeated many times); the verdict stays on the mean over the grid, and the effective lengths
    get theirs from their own paired bootstrap (tests/test_effective_length.py)."""
    col = compare.Collection(runs=[_run("base", {1024: 0.9, 2048: 0.9}), _run("other", {1024: 0.9, 2048: 0.1})])
    values, widths = compare.tables(col)
    ruler = "needle effective length (RULER 0.85)"
    assert {"needle mean", "needle 1K", "needle 2K", ruler} <= set(values.columns)
    assert values.at["other", "needle 2K"] == pytest.approx(0.1) and values.at["other", ruler] == 1024
    assert widths.at["other", ruler] == (1024, 1024)   # an effective length's interval, not a half-width
    assert {c.column for c in paired.compare(col, "base")} == {"needle mean", ruler,
                                                                "needle effective length (NoLiMa 85%)"}
    assert compare._fmt(ruler, 2048.0) == "2K" and compare._fmt("Δ " + ruler, -1024.0) == "−1K"


def test_a_grid_of_forty_lengths_keeps_one_mean_column():
    lengths = {1024 * (i + 1): 0.5 for i in range(40)}
    values, _ = compare.tables(compare.Collection(runs=[_run("m", lengths)]))
    assert not any(c.startswith("needle ") and c[7:8].isdigit() for c in values.columns)


def test_warnings_for_runs_that_are_not_comparable():
    col = compare.Collection(runs=[_run("a", {1024: 0.9, 2048: 0.9}),
                                   _run("b", {1024: 0.9}, lengths_config=[1024, 2048], haystack="pg-essays")])
    warnings = col.warnings()
    assert "needle: runs differ in haystack.name (the table compares only the cells they share)" in warnings
    assert "b: needle has 3 of 6 cells (unfinished)" in warnings
    assert compare.Collection(runs=[_run("a", {1024: 0.9}), _run("c", {1024: 0.5})]).warnings() == []


def test_every_report_page_is_one_size():
    """The table page used to be a strip a few inches high beside full pages: one size for all."""
    import matplotlib.pyplot as plt

    from harness.reports import document

    col = compare.Collection(runs=[_run("a", {1024: 0.9, 2048: 0.9}), _run("b", {1024: 0.9, 2048: 0.2})])
    sizes = set()
    for _, fig in document.figures(col, "a"):
        sizes.add(tuple(round(v, 2) for v in fig.get_size_inches()))
        plt.close(fig)
    assert sizes == {compare.PAGE}


def test_columns_are_named_by_model_and_the_settings_that_differ():
    a, b = _run("base", {1024: 0.9}), _run("theta1e4", {1024: 0.5})
    a.manifest["model"].update(name="SmolLM2", rope_parameters={"rope_type": "default", "rope_theta": 1e5})
    b.manifest["model"].update(name="SmolLM2", rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    labels = compare.Collection(runs=[a, b]).labels()
    assert labels == {"base": "base · default θ=100000", "theta1e4": "theta1e4 · default θ=10000"}
    same = compare.Collection(runs=[a, _run("again", {1024: 0.9})])
    same.runs[1].manifest["model"].update(name="SmolLM2", rope_parameters=a.manifest["model"]["rope_parameters"])
    assert same.labels() == {"base": "base", "again": "again"}   # nothing differs: the names alone
