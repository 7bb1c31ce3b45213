"""Effective length with an interval (harness.effective_length): RULER's and NoLiMa's rules on grids
whose answer is known, bootstrap intervals clustered by haystack draw, the paired comparison of two
runs, and where the numbers appear (`harness compare`, the report's table)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness import effective_length as effective
from harness.cli import main
from harness.reports import compare, document, paired
from harness.store import RunStore
from harness.tasks import needle

LENGTHS = (1024, 2048, 4096, 8192, 16384)
SHORTER = (0.97, 0.95, 0.4, 0.2, 0.1)     # retrieval rates per length: effective up to 2K by both rules ...
LONGER = (0.99, 0.98, 0.97, 0.96, 0.3)    # ... and up to 8K


def _cells(per_length: dict[int, float], depths: int = 4) -> list[effective.Cell]:
    """Every depth of a length scores its mean exactly: the bootstrap has nothing to vary."""
    return [effective.Cell(f"{n}/{d}", n, (n, 0), s) for n, s in per_length.items() for d in range(depths)]


def test_ruler_counts_up_to_the_first_failing_length():
    grid = {1024: 0.95, 2048: 0.9, 4096: 0.85, 8192: 0.5, 16384: 0.9}   # 16K passes after 8K failed
    assert effective.of(grid, effective.RULER) == 4096 and needle.effective_length(grid) == 4096
    assert effective.of({1024: 0.84, 2048: 0.99}, effective.RULER) == 0   # not even the shortest
    found = effective.estimate(_cells(grid), effective.RULER)
    assert (found.length, found.low, found.high) == (4096, 4096, 4096) and found.text() == "4K [4K, 4K]"


def test_nolima_keeps_85_percent_of_the_best_short_length():
    grid = {256: 0.6, 512: 0.7, 1024: 0.65, 2048: 0.6, 4096: 0.58, 8192: 0.3}
    # base = 0.7 (the best of 256, 512, 1K); 0.85 x 0.7 = 0.595: 2K (0.60) passes, 4K (0.58) does not.
    assert effective.of(grid, effective.NOLIMA) == 2048
    assert effective.of(grid, effective.RULER) == 0          # an absolute 0.85 is never reached
    found = effective.estimate(_cells(grid), effective.NOLIMA)
    assert found.base == pytest.approx(0.7) and found.base_from == (256, 512, 1024)
    # No tested length up to 1K: the shortest one alone is the base.
    assert effective.of({4096: 0.5, 8192: 0.45, 16384: 0.3}, effective.NOLIMA) == 8192
    assert effective.estimate(_cells({4096: 0.5, 8192: 0.45}), effective.NOLIMA).base_from == (4096,)
    assert effective.of({1024: 0.0, 2048: 0.0}, effective.NOLIMA) == 0   # a base of 0 makes no length effective


def test_needle_summary_rows_show_each_rule_with_its_interval():
    results = [{"suite": "needle", "key": f"needle/{n}/{d}", "length": n, "depth": d, "score": s, "scores": {"paper": s}}
               for n, s in {1024: 0.9, 2048: 0.88, 4096: 0.2}.items() for d in (0, 50, 100)]
    rows = {r.column: r for r in needle.NeedleSuite.summary(results, {"config": {}})}
    ruler, nolima = rows["needle effective length (RULER 0.85)"], rows["needle effective length (NoLiMa 85%)"]
    assert ruler.text() == "2K [2K, 2K]" and ruler.slice == "effective length" and not ruler.compared
    assert nolima.value == 2048 and "0.900 (the best of 1K)" in nolima.metric
    assert "one draw per length" in ruler.how   # one draw: the cells are resampled, and the row says so


def _draws(rng, rates, draws: int, depths: int = 5, spread: float = 0.05, lengths=LENGTHS, shift: float = 0.0):
    """A needle store: per length and draw a haystack region whose difficulty moves all its depths."""
    rows = []
    for n, rate in zip(lengths, rates):
        for k in range(draws):
            p = float(np.clip(rate + shift + rng.normal(0, spread), 0, 1))
            rows += [{"suite": "needle", "key": f"needle/{n}/{d}/s{k}", "length": n, "depth": d, "sample": k,
                      "score": float(rng.random() < p), "scores": {"paper": 0.0}} for d in range(depths)]
    return rows


def _cells_of(rows):
    from harness.tasks import base

    return base.length_cells(rows)


def test_the_interval_covers_the_truth_and_widens_with_fewer_draws():
    rates = (0.98, 0.95, 0.9, 0.6, 0.2)          # truth: 4K by both rules
    truth = {rule: effective.of(dict(zip(LENGTHS, rates)), rule) for rule in effective.RULES}
    assert set(truth.values()) == {4096}
    rng = np.random.default_rng(0)
    covered, widths = {rule: 0 for rule in effective.RULES}, {2: [], 16: []}
    for trial in range(30):
        for draws in (2, 16):
            cells = _cells_of(_draws(rng, rates, draws))
            for rule in effective.RULES:
                found = effective.estimate(cells, rule, seed=trial)
                assert found.by_cell == () and found.clusters == draws * len(LENGTHS)
                widths[draws].append(np.log2(max(found.high, 512)) - np.log2(max(found.low, 512)))
                if draws == 16:
                    covered[rule] += found.low <= truth[rule] <= found.high
    assert all(n >= 27 for n in covered.values()), covered     # 95% intervals: at least 90% of 30
    assert np.mean(widths[2]) > 1.5 * np.mean(widths[16]), (np.mean(widths[2]), np.mean(widths[16]))


def test_the_bootstrap_is_seeded():
    rows = _draws(np.random.default_rng(1), (0.95, 0.9, 0.87, 0.84, 0.8), 3)
    assert effective.estimate(_cells_of(rows), seed=4) == effective.estimate(_cells_of(rows), seed=4)


def _run(name, rows, tmp_path=Path(".")):
    return compare.Run(name, tmp_path / name, {"model": {"name": name}}, rows)


def test_a_clearly_longer_run_gets_a_verdict_and_identical_runs_none():
    rng = np.random.default_rng(2)
    short, long = _draws(rng, SHORTER, 8), _draws(rng, LONGER, 8)
    for rule in effective.RULES:
        d = effective.paired(_cells_of(short), _cells_of(long), rule)
        assert (d.a, d.b, d.diff) == (2048, 8192, 6144) and d.low > 0 and d.p < 0.01
        same = effective.paired(_cells_of(short), _cells_of(short), rule)
        assert (same.diff, same.low, same.high, same.p) == (0, 0, 0, 1.0)
    found = paired.compare(compare.Collection([_run("short", short), _run("long", long), _run("again", short)]), "short")
    by = {(c.run, c.column): c for c in found}
    ruler = by[("long", "needle effective length (RULER 0.85)")]
    assert ruler.unit == "tokens" and ruler.verdict == "better" and ruler.texts()[0] == "+6K"
    assert by[("again", "needle effective length (NoLiMa 85%)")].verdict == "no detectable difference"
    assert by[("again", "needle effective length (NoLiMa 85%)")].p == 1.0
    # They join Holm's family: six comparisons (mean, RULER, NoLiMa for two runs).
    assert len(found) == 6 and ruler.p_adjusted >= ruler.p * 2


def test_paired_on_shared_units_only_and_the_same_regions_for_both():
    rng = np.random.default_rng(3)
    a = _draws(rng, (0.97, 0.93, 0.9, 0.3, 0.1), 4)
    b = [r for r in _draws(rng, (0.97, 0.93, 0.9, 0.3, 0.1), 5)]     # one more draw: not shared
    d = effective.paired(_cells_of(a), _cells_of(b), effective.RULER)
    assert d.n == len(a) and d.clusters == 4 * len(LENGTHS)
    assert effective.paired(_cells_of(a), [], effective.RULER) is None


def _store(path: Path, rows) -> None:
    store = RunStore.open(path, {"config": {"suites": {"needle": {"lengths": list(LENGTHS), "depths": list(range(5))}}},
                                 "model": {"name": path.name, "parameters": 135_000_000}})
    for row in rows:
        store.append(row)


def test_harness_compare_prints_the_effective_length_comparison(tmp_path, capsys):
    rng = np.random.default_rng(4)
    _store(tmp_path / "base", _draws(rng, SHORTER, 8))
    _store(tmp_path / "longer", _draws(rng, LONGER, 8))
    main(["compare", str(tmp_path / "base"), str(tmp_path / "longer")])
    out = capsys.readouterr().out
    assert "RULER 0.85" in out and "NoLiMa 85%" in out and "+6K" in out and "better" in out
    main(["compare", str(tmp_path / "base"), str(tmp_path / "longer"), "--json"])
    rows = {c["column"]: c for c in json.loads(capsys.readouterr().out)}
    ruler = rows["needle effective length (RULER 0.85)"]
    assert ruler["unit"] == "tokens" and ruler["diff"] == 6144 and ruler["verdict"] == "better"


def test_the_report_table_shows_each_length_with_its_interval_and_the_difference():
    rng = np.random.default_rng(5)
    col = compare.Collection([_run("base", _draws(rng, SHORTER, 8)), _run("longer", _draws(rng, LONGER, 8))])
    table = document.comparison_table(col, "base")
    cells = {row[0]: row[1:] for row in compare.cell_texts(table.values, table.widths, table.verdicts)}
    base, longer = cells["needle effective length (RULER 0.85)"]
    assert base.startswith("2K [") and longer.startswith("8K [") and longer.endswith("▲")
    delta = cells["Δ needle effective length (RULER 0.85)"]
    assert delta[0] == "–" and delta[1].startswith("+6K [+")
    columns = list(table.values.columns)
    assert columns.index("Δ needle effective length (NoLiMa 85%)") == columns.index("needle effective length (NoLiMa 85%)") + 1
    assert "better on needle mean, needle effective length (RULER 0.85)" in table.sentence


def test_the_paired_test_rarely_calls_a_difference_between_runs_of_one_truth():
    """Two runs of the same model (other haystack draws and answers): about 5% of paired tests
    may call a difference at the 5% level; a bootstrap of a threshold statistic must not do much worse."""
    rates = (0.95, 0.9, 0.87, 0.84, 0.8)        # near the threshold: the hard case for a length
    rng = np.random.default_rng(6)
    alarms = {rule: 0 for rule in effective.RULES}
    for trial in range(60):
        a, b = _cells_of(_draws(rng, rates, 3)), _cells_of(_draws(rng, rates, 3))
        for rule in effective.RULES:
            alarms[rule] += effective.paired(a, b, rule, resamples=2000, seed=trial).p < 0.05
    assert all(n <= 6 for n in alarms.values()), alarms   # at most 10% of 60
