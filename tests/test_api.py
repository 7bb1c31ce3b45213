"""The Python API (harness.run): any model source or a model object in memory, results as data,
quiet, a run directory only when asked."""

import json

import pytest
import torch

import harness


@pytest.fixture()
def objects(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), \
        AutoTokenizer.from_pretrained(tiny_model_dir)


GRID = dict(lengths="256,512", depths="0,100", protocol="exact", scorer="both")


def test_in_memory_model_from_a_training_loop(tmp_path, monkeypatch, capfd, objects, tiny_model_dir):
    model, tok = objects
    monkeypatch.chdir(tmp_path)
    model.train()                                   # as a training loop leaves it
    capfd.readouterr()                              # (the fixture's loading bar)
    res = harness.run(model, tokenizer=tok, **GRID)
    assert model.training                           # its mode comes back
    assert list(tmp_path.iterdir()) == []           # no run directory unless asked
    out, err = capfd.readouterr()
    assert out == "" and err == ""                  # quiet by default
    assert len(res.cells) == 4 and res.out is None
    frame = res.frame
    assert list(frame.columns[:4]) == ["suite", "slice", "metric", "value"]
    assert frame.loc[frame.slice == "all cells", "value"].item() == res.score("needle")
    assert res.manifest["config"]["model"]["id"].startswith("in-memory:")
    assert "scores.loglik" in res.cells_frame.columns
    # The same numbers as the same weights from their directory.
    from_dir = harness.run(str(tiny_model_dir), dtype="fp32", **GRID)
    assert sorted((c["key"], c["output"], c["score"]) for c in res.cells) == \
        sorted((c["key"], c["output"], c["score"]) for c in from_dir.cells)
    for a, b in zip(sorted(res.cells, key=lambda c: c["key"]), sorted(from_dir.cells, key=lambda c: c["key"])):
        assert a["scores"]["loglik"] == pytest.approx(b["scores"]["loglik"], abs=1e-4)


def test_a_run_directory_when_asked(tmp_path, objects):
    model, tok = objects
    out = tmp_path / "step-0"
    res = harness.run(model, tokenizer=tok, out=out, **GRID)
    assert res.out == out and (out / "manifest.json").is_file() and (out / "results_lm_eval.json").is_file()
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    again = harness.run(model, tokenizer=tok, out=out, **GRID)     # resumes: nothing re-run
    assert again.cells == res.cells
    with torch.no_grad():                                          # a training step later: other weights
        next(model.parameters()).add_(0.01)
    with pytest.raises(harness.UserError, match="different config"):
        harness.run(model, tokenizer=tok, out=out, **GRID)
    assert json.loads((out / "manifest.json").read_text())["config"]["model"]["id"] == res.manifest["config"]["model"]["id"]


def test_mistakes(objects):
    model, tok = objects
    with pytest.raises(TypeError, match="unexpected keyword argument 'scorr'"):
        harness.run(model, tokenizer=tok, scorr="both")
    with pytest.raises(harness.UserError, match="--scorer: unknown"):
        harness.run(model, tokenizer=tok, scorer="nope")
    with pytest.raises(harness.UserError, match="needs its tokenizer"):
        harness.run(model)
    with pytest.raises(harness.UserError, match="runs on the hf backend"):
        harness.run(model, tokenizer=tok, backend="vllm")
    with pytest.raises(harness.UserError, match="rope_theta: a model object is evaluated as it is"):
        harness.run(model, tokenizer=tok, rope_theta=1e6)
