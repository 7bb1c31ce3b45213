"""Every run also writes its numbers in lm-eval's results shape (harness.lm_eval_format): lm-eval's
own make_table prints it, per-length needle metrics keyed as lm-eval's RULER tasks key theirs."""

import json

from tests.conftest import harness_cli


def test_make_table_prints_a_runs_lm_eval_json(tmp_path, tiny_model_dir):
    from lm_eval.utils import make_table

    out = tmp_path / "run"
    proc = harness_cli("run", "--model", str(tiny_model_dir), "--lengths", "256,512", "--depths", "0,100",
                       "--dtype", "fp32", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((out / "results_lm_eval.json").read_text())
    needle = doc["results"]["harness_needle"]
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    for length in (256, 512):
        scores = [r["score"] for r in rows if r["length"] == length]
        assert needle[f"{length},none"] == sum(scores) / len(scores)   # RULER's key: the length in tokens
        assert isinstance(needle[f"{length}_stderr,none"], float)
    assert needle["paper,none"] == sum(r["score"] for r in rows) / len(rows)
    assert doc["n-samples"]["harness_needle"]["effective"] == 4
    assert doc["config"]["model_args"] == f"pretrained={tiny_model_dir.resolve()}"
    assert doc["configs"]["harness_needle"]["metadata"]["suite_config"]["lengths"] == [256, 512]
    table = make_table(doc)
    lines = [line for line in table.splitlines() if "|" in line]
    assert lines[0].split("|")[1].strip() == "Tasks" and "harness_needle" in lines[2]
    for metric in ("256", "512", "paper", "effective_length"):
        assert any(line.split("|")[5].strip() == metric for line in lines[2:]), (metric, table)
