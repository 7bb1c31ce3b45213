"""Time estimates: FLOPs counted as the prefix tree computes them, a rate remembered per machine,
an ETA from the first second, ETA lines in log mode."""

import json

import pytest

from harness import estimate
from harness.runner import remaining
from harness.tasks import needle
from tests.conftest import harness_cli


def test_the_prefix_tree_model_predicts_the_backends_reuse(tiny_model_dir, tmp_path):
    """The estimate's model of the tree (needle.tree_spans) against the tokens the hf backend
    actually reused, on a real grid of both protocols: within 15%."""
    for protocol in ("exact", "reference"):
        out = tmp_path / protocol
        proc = harness_cli("run", "--model", str(tiny_model_dir), "--lengths", "512:2k:4", "--depths", "0:100:5",
                           "--protocol", protocol, "--max-new-tokens", "4", "--dtype", "fp32", "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        cells = [needle.Cell("needle", r["key"], r["length"], r["depth"], r.get("sample", 0)) for r in rows]
        predicted = sum(start for start, _ in needle.tree_spans(cells, 200 if protocol == "reference" else 0))
        actual = sum(r["reused_tokens"] for r in rows)
        assert actual > 0 and abs(predicted - actual) <= 0.15 * actual, (protocol, predicted, actual)
        assert "(prefix tree counted): about" in proc.stderr and "(estimated" in proc.stderr
        assert proc.stderr.count("ETA") >= 20   # log mode: an ETA on every cell's line


def test_the_rate_is_remembered_per_machine_and_suite(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGCTX_HARNESS_CACHE", str(tmp_path))
    k = estimate.key({"precision": {"dtype": "fp32"}}, "hf", "needle")
    assert estimate.remembered(k) is None
    estimate.remember(k, 100e9, 10.0)
    assert estimate.remembered(k) == pytest.approx(10e9)
    estimate.remember(k, 100e9, 5.0)                     # the newest run weighs half
    assert estimate.remembered(k) == pytest.approx(15e9)
    assert estimate.rate(k, "cpu", "fp32") == (pytest.approx(15e9), "at the rate measured by earlier runs here")
    (tmp_path / "throughput.json").write_text("{damaged")
    assert estimate.remembered(k) is None              # a damaged memory: back to the first-run rule
    rate, source = estimate.rate(k, "cpu", "fp32")
    assert rate > 0 and source.startswith("first run here")


def test_the_eta_exists_from_the_start_and_follows_the_measured_pace():
    assert remaining(planned=100, elapsed=0, done=0, total=10) == 100        # the estimate, before any cell
    assert remaining(planned=100, elapsed=30, done=0, total=10) == 70
    assert remaining(planned=100, elapsed=20, done=5, total=10) == 20        # then the pace measured so far
