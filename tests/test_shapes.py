"""Random-weight shapes: published sizes, `harness run --model random:SHAPE` with a tokenizer
directory alone, `--from-scratch SHAPE`, and their mistakes as one line."""

import json

import pytest
import torch

from harness import flops, shapes
from harness.errors import UserError
from tests.conftest import harness_cli


@pytest.mark.parametrize("name, billions", [("tinyllama-1.1b", 1.10), ("llama2-7b", 6.74), ("llama2-13b", 13.02),
                                            ("llama3-8b", 8.03), ("smollm2-135m", 0.135)])
def test_shapes_have_their_published_sizes(name, billions):
    """With a tokenizer no larger than the shape's vocabulary, the parameter count is the published one."""
    from transformers import LlamaForCausalLM

    class Tok:  # only the size and special ids are read
        bos_token_id, eos_token_id = 1, 2

        def __len__(self):
            return 32000

    with torch.device("meta"):
        model = LlamaForCausalLM(shapes.config(name, Tok()))
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, rel=0.01)
    assert flops.dense_params(model.config) > 0


def test_a_larger_tokenizer_widens_the_vocabulary(tokenizer):
    assert shapes.config("llama2-7b", tokenizer).vocab_size == len(tokenizer) > 32000
    assert shapes.config("7b", tokenizer).hidden_size == 4096     # aliases
    assert shapes.config("tiny", tokenizer, 4096).max_position_embeddings == 4096
    with pytest.raises(UserError, match="no shape 'llama9'.*accepted: tiny"):
        shapes.config("llama9", tokenizer)


def test_run_a_random_shape_with_a_tokenizer_directory(tmp_path, smollm2_dir):
    tok = tmp_path / "tok"
    tok.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tok / name).write_bytes((smollm2_dir / name).read_bytes())
    out = tmp_path / "run"
    proc = harness_cli("run", "--model", "random:tiny", "--tokenizer", str(tok), "--lengths", "256,512",
                       "--depths", "0,100", "--max-new-tokens", "4", "--dtype", "fp32", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["model"]["id"] == "random:tiny"
    assert manifest["config"]["model"]["tokenizer"] == str(tok.resolve())
    assert manifest["model"]["name"] == "random-tiny"
    cells = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(cells) == 4 and all(c["peak_gib"] > 0 for c in cells)


@pytest.mark.parametrize("args, message", [
    (["--model", "random:llama9"], "--model random:SHAPE: no shape 'llama9'"),
    (["--model", "smollm2-135m", "--tokenizer", "smollm2-135m"], "--tokenizer: only for --backend openai"),
])
def test_random_shape_mistakes_are_one_line(tmp_path, args, message):
    proc = harness_cli("run", *args, "--lengths", "256", "--depths", "0", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_random_weights_need_the_hf_backend():
    from harness import models

    with pytest.raises(UserError, match="random weights run on --backend hf"):
        models.load("random:tiny", weights=False)


def test_train_from_scratch_takes_a_shape_and_refuses_a_tokenizer_with_a_base(tmp_path):
    proc = harness_cli("train", "--from-scratch", "llama9", "--out", str(tmp_path / "t"))
    assert proc.returncode == 2 and "--from-scratch: no shape 'llama9'" in proc.stderr
    proc = harness_cli("train", "--base", "smollm2-135m", "--tokenizer", "x", "--data", "d", "--seq-len", "1k",
                       "--tokens", "10k", "--out", str(tmp_path / "t"))
    assert proc.returncode == 2 and "--tokenizer: only with --from-scratch" in proc.stderr
