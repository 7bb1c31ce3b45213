"""4K regression through lm-eval: our in-process path equals the lm_eval CLI on the same model."""

import json
import re
import subprocess
import sys

import pytest

pytest.importorskip("lm_eval")

from harness import models  # noqa: E402
from harness.backends.hf import HFBackend  # noqa: E402
from harness.errors import UserError  # noqa: E402
from harness.tasks import regression  # noqa: E402
from tests.conftest import harness_cli  # noqa: E402


def test_our_path_equals_the_lm_eval_cli(tiny_model_dir, tmp_path):
    cfg = regression.resolve_config(tasks="harness_kjv_cloze,harness_kjv_ppl", num_fewshot=0, limit=20, max_length=2048)
    suite = regression.RegressionSuite(cfg, models.load(str(tiny_model_dir), dtype="fp32").tokenizer)
    backend = HFBackend(models.load(str(tiny_model_dir), dtype="fp32"))
    ours = {c.task: suite.evaluate(c, backend) for c in suite.cells()}
    proc = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                           f"pretrained={tiny_model_dir},dtype=float32,max_length=2048",
                           "--tasks", "harness_kjv_cloze,harness_kjv_ppl", "--include_path", str(regression.TASK_DIR),
                           "--limit", "20", "--batch_size", "1", "--output_path", str(tmp_path / "cli")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)  # plain lm_eval, the committed YAMLs
    assert proc.returncode == 0, proc.stderr[-2000:]
    (result_file,) = (tmp_path / "cli").rglob("results_*.json")
    cli = json.loads(result_file.read_text())["results"]
    assert ours["harness_kjv_cloze"]["scores"]["acc"] == cli["harness_kjv_cloze"]["acc,none"]
    assert ours["harness_kjv_cloze"]["scores"]["acc_stderr"] == pytest.approx(cli["harness_kjv_cloze"]["acc_stderr,none"])
    assert ours["harness_kjv_ppl"]["scores"]["word_perplexity"] == pytest.approx(
        cli["harness_kjv_ppl"]["word_perplexity,none"], rel=1e-4)


def test_unknown_task_suggests_close_names():
    with pytest.raises(UserError, match="did you mean harness_kjv_cloze"):
        regression.resolve_config(tasks="harness_kjv_cloz", num_fewshot=0, limit=None, max_length=2048)


def test_regression_suite_in_a_run_directory(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = harness_cli("run", "--model", str(tiny_model_dir), "--suite", "regression", "--regression-limit", "10",
                       "--dtype", "fp32", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rows} == {"harness_kjv_cloze", "harness_kjv_ppl"}
    cloze = next(r for r in rows if r["task"] == "harness_kjv_cloze")
    assert cloze["metric"] == "acc" and 0 <= cloze["score"] <= 1 and cloze["scores"]["acc_stderr"] > 0
    ppl = next(r for r in rows if r["task"] == "harness_kjv_ppl")
    assert ppl["metric"] == "word_perplexity" and ppl["score"] > 1
    assert re.search(r"regression .* harness_kjv_cloze .* acc .* ± ", proc.stderr)
    assert "Running loglikelihood requests" not in proc.stderr  # lm-eval's per-request bars are off
    # lm-eval's own output is kept beside the run's results: its results and every document's sample.
    for task, docs in (("harness_kjv_cloze", 10), ("harness_kjv_ppl", 10)):
        kept = json.loads((out / "lm_eval" / task / "results.json").read_text())
        assert kept["results"][task] and kept["n-samples"][task]["effective"] == docs
        samples = [json.loads(x) for x in (out / "lm_eval" / task / "samples.jsonl").read_text().splitlines()]
        assert len(samples) == docs and {"doc", "target", "resps"} <= set(samples[0])
    # The run's lm-eval-shaped results carry lm-eval's numbers and directions.
    shaped = json.loads((out / "results_lm_eval.json").read_text())
    assert shaped["results"]["harness_kjv_cloze"]["acc,none"] == cloze["score"]
    assert shaped["higher_is_better"]["harness_kjv_ppl"]["word_perplexity"] is False
    assert shaped["versions"]["harness_kjv_cloze"] == 1.0


def test_a_fewshot_prompt_longer_than_the_context_is_refused(tiny_model_dir):
    cfg = regression.resolve_config(tasks="harness_kjv_cloze", num_fewshot=3, limit=2, max_length=64)
    loaded = models.load(str(tiny_model_dir), dtype="fp32")
    suite = regression.RegressionSuite(cfg, loaded.tokenizer)
    with pytest.raises(UserError, match="3-shot prompt of harness_kjv_cloze is .* longer than the 64"):
        suite.evaluate(suite.cells()[0], HFBackend(loaded))
