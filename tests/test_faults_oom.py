"""Faults, class "out of memory (GPU)": a cell that does not fit is stored as oom (its length and
peak, no score) and the grid goes on; a prompt that fits in smaller prefill chunks is retried with
them and gets the same output; a training step that does not fit ends the run in one line (exit 1)
and ``--resume`` finishes it with the losses of an uninterrupted run.

The out-of-memory errors are real ``torch.cuda.OutOfMemoryError``s raised where CUDA would raise
them (the hf backend's forward, a training step) by ``HARNESS_OOM_AT`` (harness.oom), on CPU.
"""

import json

import pytest

from harness import models
from harness.backends.hf import HFBackend
from harness.cli import main
from harness.errors import UserError
from harness.reports import compare
from harness.store import RunStore
from harness.tasks import base, needle


def _run(args):
    main(args)   # a SystemExit here would fail the test with its code


def test_a_needle_cell_out_of_memory_is_stored_and_the_grid_goes_on(tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = ["run", "--model", str(tiny_model_dir), "--suite", "needle", "--lengths", "256,384,512", "--depths", "0,50",
            "--protocol", "exact", "--max-new-tokens", "4", "--dtype", "fp32", "--out", str(out)]
    monkeypatch.setenv("HARNESS_OOM_AT", "eval:384")   # every forward of a 384-token prompt
    _run(args)
    err = capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    missing = [r for r in rows if r.get("status") == "oom"]
    assert len(rows) == 6 and {r["key"] for r in missing} == {"needle/384/0", "needle/384/50"}
    assert all(r["length"] == 384 and r["score"] is None and r["peak_gib"] > 0 for r in missing)
    assert all(isinstance(r["score"], float) for r in rows if r not in missing)   # the others ran
    assert "2 cells did not fit in memory (out of memory) at length 384" in err   # the grid's own line
    assert "did not fit" in err.split("results")[-1] and "384" in err.split("results")[-1]   # the summary table
    # Missing data, never a 0: every summary is over the four scored cells.
    store = RunStore(out)
    scored = list(store.results())
    assert len(scored) == 4 and len(store.oom()) == 2
    from harness.evaluate import summary_rows

    overall = next(r for r in summary_rows(scored, store.read_manifest()) if r["slice"] == "all cells")
    assert overall["n"] == 4 and overall["value"] == pytest.approx(sum(r["score"] for r in scored) / 4)
    lm_eval = json.loads((out / "results_lm_eval.json").read_text())
    assert lm_eval["out_of_memory"] == {"needle": [384]} and "384,none" not in lm_eval["results"]["harness_needle"]
    # A rerun does not try them again; reports and comparisons read the run and say what is missing.
    monkeypatch.delenv("HARNESS_OOM_AT")
    _run(args)
    assert "0 to run" in capsys.readouterr().err
    _run(["report", str(out)])
    assert "did not fit in memory" in capsys.readouterr().err
    col = compare.collect([out])
    assert any("2 cells did not fit in memory" in w and "384" in w for w in col.warnings())
    assert not any("unfinished" in w for w in col.warnings())
    assert compare.table(col).loc["run", "needle mean"] == pytest.approx(overall["value"])


def test_the_store_keeps_oom_cells_out_of_scores_and_refuses_other_statuses(tmp_path):
    store = RunStore.open(tmp_path / "run", {"config": {"suites": {"needle": {}}}})
    store.append({"suite": "needle", "key": "needle/1K/0", "length": 1024, "score": 0.5})
    store.append({"suite": "needle", "key": "needle/128K/0", "length": 131072, "status": "oom", "score": None})
    assert [r["key"] for r in store.results()] == ["needle/1K/0"]
    assert [r["key"] for r in store.oom()] == ["needle/128K/0"] and len(store.done("needle")) == 2
    store.append({"suite": "needle", "key": "needle/2K/0", "length": 2048, "status": "skipped", "score": None})
    with pytest.raises(UserError, match="result 3 has status 'skipped'"):
        list(store.results())


def test_a_prompt_that_fits_in_smaller_chunks_is_retried_with_the_same_output(tiny_model_dir, tokenizer, kjv,
                                                                               monkeypatch):
    loaded = models.load(str(tiny_model_dir), dtype="fp32")
    cfg = needle.resolve_config(preset=None, lengths="600,1000", depths="50", chat=False, haystack=kjv,
                                max_new_tokens=8, protocol="exact")
    suite = needle.NeedleSuite(cfg, kjv, tokenizer)
    backend = HFBackend(loaded, prefill_chunk=1024)   # a retry halves the chunk: 512
    plain = {c.key: r for c, r in suite.run(suite.cells(), backend)}
    monkeypatch.setenv("HARNESS_OOM_AT", "eval:1000>512")   # a forward of more than 512 of its tokens does not fit
    retried = {c.key: r for c, r in suite.run(suite.cells(), backend)}
    assert retried["needle/1000/50"]["prefill_chunk"] == 512 and "prefill_chunk" not in retried["needle/600/50"]
    for key, r in plain.items():
        assert "prefill_chunk" not in r
        assert (retried[key]["output"], retried[key]["scores"]) == (r["output"], r["scores"])
    monkeypatch.setenv("HARNESS_OOM_AT", "eval:1000>256")   # not even the smaller chunk fits
    failed = {c.key: r for c, r in suite.run(suite.cells(), backend)}
    assert failed["needle/1000/50"]["status"] == "oom" and failed["needle/1000/50"]["length"] == 1000
    assert "512" in failed["needle/1000/50"]["error"]   # the chunks it tried
    assert failed["needle/600/50"]["output"] == plain["needle/600/50"]["output"]


class _Loss(base.Suite):
    """A cell-by-cell suite (the default Suite.run): token log-likelihood of a prompt of each length."""

    name = "probe"

    def __init__(self, lengths):
        self.lengths = lengths

    def cells(self):
        return [needle.Cell(self.name, f"probe/{n}", n, 0.0) for n in self.lengths]

    def evaluate(self, cell, backend):
        nll = backend.token_nll(list(range(1000, 1000 + cell.length)), chunk=32)
        return {"suite": self.name, "key": cell.key, "length": cell.length, "score": float(nll.mean())}


def test_a_cell_by_cell_suite_stores_oom_and_goes_on(tiny_model_dir, monkeypatch):
    backend = HFBackend(models.load(str(tiny_model_dir), dtype="fp32"))
    monkeypatch.setenv("HARNESS_OOM_AT", "eval:64")
    suite = _Loss([32, 64, 96])
    got = {c.length: r for c, r in suite.run(suite.cells(), backend)}
    assert got[64]["status"] == "oom" and got[64]["score"] is None and "injected" in got[64]["error"]
    assert isinstance(got[32]["score"], float) and isinstance(got[96]["score"], float)


TRAIN = ["--seq-len", "128", "--tokens", str(128 * 4 * 8), "--batch-tokens", "512", "--micro-batch", "2",
         "--lr", "3e-3", "--warmup-steps", "1", "--dtype", "fp32", "--no-grad-ckpt", "--save-every", "2"]


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_training_step_out_of_memory_ends_in_one_line_and_resume_finishes(tiny_model_dir, shards, tmp_path,
                                                                              monkeypatch, capsys):
    command = ["train", "--base", str(tiny_model_dir), "--data", str(shards), *TRAIN]  # 8 steps of 2 x 2 sequences
    whole, split = tmp_path / "whole", tmp_path / "split"
    _run([*command, "--out", str(whole)])
    monkeypatch.setenv("HARNESS_OOM_AT", "step:6")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*command, "--out", str(split)])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "Traceback" not in err   # the machine, not the input
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().endswith(errors[0]), err
    line = errors[0]
    assert "out of memory in training step 6 of 8" in line and "sequence length 128" in line and "GiB" in line
    for fix in ("--micro-batch", "--no-grad-ckpt", "--seq-len", "step-000004", "--resume"):
        assert fix in line, (fix, line)
    assert (split / "checkpoints" / "step-000004" / "model.safetensors").is_file() and not (split / "final").exists()
    monkeypatch.delenv("HARNESS_OOM_AT")
    _run([*command, "--out", str(split), "--resume"])
    a, b = _losses(whole), _losses(split)
    assert len(a) == len(b) == 8
    assert b == pytest.approx(a, rel=1e-5, abs=1e-5)
