"""Needle heatmaps as a paper prints them: a colour-blind-safe palette on the fixed 0-1 scale (the
paper's as an option), values in the cells of small grids, a title that says what is drawn, and
any stored score on request (`harness report --metric`)."""

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from harness.errors import UserError
from harness.reports import heatmap
from tests.conftest import one_line_error


def _results(lengths=(1024, 2048), depths=(0, 50, 100)):
    return [{"suite": "needle", "key": f"needle/{n}/{d}", "length": n, "depth": d, "score": d / 100,
             "scores": {"paper": d / 100, "exact": float(d == 100)}} for n in lengths for d in depths]


def test_the_default_palette_is_cividis_and_the_papers_is_an_option():
    assert heatmap.palette(None).name == "cividis"
    paper = heatmap.palette("paper")
    assert paper(0.0)[0] > 0.9 and paper(1.0)[1] > 0.8   # red at 0, green at 1, as the reference code
    with pytest.raises(UserError, match="--palette: unknown 'rainbow'; known: cividis, paper"):
        heatmap.palette("rainbow")


def test_small_grids_carry_their_values_large_ones_do_not():
    small = heatmap.grid(_results())
    fig = heatmap.draw(small, "t", None)
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["0.00", "0.00", "0.50", "0.50", "1.00", "1.00"]
    plt.close(fig)
    big = pd.DataFrame(0.5, index=range(11), columns=[1024 * (i + 1) for i in range(40)])  # the paper's 40 x 11
    fig = heatmap.draw(big, "t", None)
    assert len(fig.axes[0].texts) == 0
    plt.close(fig)


def test_title_says_what_is_drawn():
    manifest = {"model": {"name": "m", "effective_max_positions": 4096, "rope_parameters": {"rope_theta": 1e4}},
                "config": {"suites": {"needle": {"haystack": {"name": "kjv"}}}}}
    within = heatmap.title(manifest, _results(), "needle", None, "run")
    assert "max positions 4096 (every length within)" in within and "dashed" not in within
    assert "haystack kjv · 1 draw per cell" in within
    beyond = heatmap.title(manifest, _results(lengths=(2048, 8192)), "needle", "exact", "run")
    assert "max positions 4096 (dashed line)" in beyond and "\nexact\n" in beyond


def test_another_stored_score(tmp_path):
    assert heatmap.metrics(_results()) == ["paper", "exact"]
    assert heatmap.grid(_results(), metric="exact").loc[100.0].tolist() == [1.0, 1.0]
    with pytest.raises(UserError, match="--metric: 'rouge' is not stored for every needle cell; stored: paper, exact"):
        heatmap.check_metric(_results(), "rouge")


def test_report_metric_and_palette_from_the_cli(capsys, tmp_path, tiny_model_dir):
    from tests.conftest import harness_cli

    out = tmp_path / "run"
    proc = harness_cli("run", "--model", str(tiny_model_dir), "--lengths", "256", "--depths", "0,100", "--protocol",
                       "exact", "--dtype", "fp32", "--palette", "paper", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    proc = harness_cli("report", str(out), "--metric", "exact", "--out", str(tmp_path / "figs"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "figs" / "needle_exact_heatmap.png").stat().st_size > 0
    assert "stored: " in one_line_error(capsys, ["report", str(out), "--metric", "bogus"])
    assert "--palette: unknown" in one_line_error(capsys, ["report", str(out), "--palette", "jet"])
