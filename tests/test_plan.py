"""`harness plan` on stored pilot runs: its table of draws, seeds and minutes, and its refusals.
The power figures themselves are checked by simulation in test_power.py."""

from __future__ import annotations

import numpy as np

from harness.cli import main
from harness.reports import planning
from harness.reports.compare import collect
from harness.store import RunStore
from tests.conftest import one_line_error

LENGTHS, DEPTHS, DRAWS = (1024, 2048, 4096), (0, 50, 100), 3


def _run(path, shift: float, rng, noise: float = 0.25) -> None:
    """A stored needle run over a small grid with several haystack draws: scores near 0.6 + shift."""
    store = RunStore.open(path, {"config": {"suites": {"needle": {"lengths": list(LENGTHS)}}},
                                 "model": {"name": "m", "parameters": 135_000_000}})
    for n in LENGTHS:
        region = rng.normal(0, 0.1, DRAWS)
        for k in range(DRAWS):
            for d in DEPTHS:
                score = float(np.clip(0.6 + shift + region[k] + rng.normal(0, noise), 0, 1))
                store.append({"suite": "needle", "key": f"needle/{n}/{d}/{k}", "length": n, "depth": float(d),
                              "sample": k, "score": score, "scores": {"paper": score}, "seconds": 0.5,
                              "new_tokens": 20})


def test_two_pilot_runs_give_draws_seeds_and_minutes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    _run(tmp_path / "a", 0.0, rng)
    _run(tmp_path / "b", 0.05, rng)
    rows = planning.plan(collect([tmp_path / "a", tmp_path / "b"]), "needle mean", None, 0.05)
    assert len(rows) == 1 and rows[0].comparison == "b vs a"
    row = rows[0]
    assert row.plan.reached and row.plan.power >= 0.8 and row.plan.draws > DRAWS   # the pilot's 3 are too few
    assert row.plan.seeds == 1 and any("seeds not planned" in n for n in row.notes)
    assert (row.lengths, row.depths, row.pilot_draws) == (3, 3, 3)
    cells = 3 * 3 * row.plan.draws
    assert row.minutes["here"] == 2 * cells * 0.5 / 60   # two models, the pilot's 0.5 s per cell
    assert row.minutes["h200"] is not None
    main(["plan", str(tmp_path / "a"), str(tmp_path / "b"), "--difference", "0.05"])
    out = capsys.readouterr().out
    assert "b vs a" in out and "draws/cell" in out and f" {row.plan.draws} " in out


def test_one_pilot_run_plans_with_its_own_spread_doubled(tmp_path):
    _run(tmp_path / "a", 0.0, np.random.default_rng(1))
    (row,) = planning.plan(collect([tmp_path / "a"]), "needle mean", None, 0.1)
    assert row.comparison == "two models like a" and "doubled" in row.components.source
    smaller = planning.plan(collect([tmp_path / "a"]), "needle mean", None, 0.2)[0]
    assert smaller.plan.draws < row.plan.draws   # a larger difference needs fewer draws


def test_bad_plan_input_is_one_line(tmp_path, capsys):
    _run(tmp_path / "a", 0.0, np.random.default_rng(2))
    assert "--difference" in one_line_error(capsys, ["plan", str(tmp_path / "a"), "--difference", "0"])
    assert "needle mean" in one_line_error(capsys, ["plan", str(tmp_path / "a"), "--column", "bookqa mean"])
    assert "--power" in one_line_error(capsys, ["plan", str(tmp_path / "a"), "--power", "1.5"])


def test_ablate_plan_with_a_pilot_prints_the_draws_and_seeds(tmp_path, capsys):
    rng = np.random.default_rng(3)
    _run(tmp_path / "base", 0.0, rng)
    _run(tmp_path / "mix", 0.1, rng)
    main(["ablate", "--preset", "tiny", "--plan", "--pilot", str(tmp_path / "base"), "--pilot", str(tmp_path / "mix"),
          "--difference", "0.1", "--out", str(tmp_path / "ablation")])
    out = capsys.readouterr().out
    assert "mix vs base" in out and "draws/cell" in out
    assert "--pilot: only with --plan" in one_line_error(capsys, ["ablate", "--pilot", str(tmp_path / "base")])
