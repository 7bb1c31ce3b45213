"""Bad input, class "corrupt or odd model directories": a damaged file in a model directory is one
line naming it (exit 2) for `harness run --model` and `harness train --base`, before any run
directory exists; a device this machine lacks is refused the same way."""

import json
import shutil

import pytest

from tests.conftest import one_line_error


def _truncate_weights(d):
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])


def _garbage_weights(d):
    (d / "model.safetensors").write_bytes(bytes(range(256)) * 20)


def _edit_config(**changes):
    def edit(d):
        config = json.loads((d / "config.json").read_text())
        config.update(changes)
        (d / "config.json").write_text(json.dumps(config))
    return edit


def _drop_tokenizer(d):
    for f in d.iterdir():
        if "token" in f.name:
            f.unlink()


def _wrong_shapes(d):
    _edit_config(hidden_size=128, intermediate_size=256)(d)


DAMAGE = {
    "truncated weights": (_truncate_weights, "cannot be loaded"),
    "garbage weights": (_garbage_weights, "cannot be loaded"),
    "positions as text": (_edit_config(max_position_embeddings="lots"), "max_position_embeddings"),
    "positions zero": (_edit_config(max_position_embeddings=0), "max_position_embeddings is 0"),
    "unknown model type": (_edit_config(model_type="nosuchmodel"), "cannot be read as a transformers config"),
    "no tokenizer": (_drop_tokenizer, "no tokenizer loads from"),
    "weights of another shape": (_wrong_shapes, "weights in"),
}


@pytest.fixture
def damaged(tiny_model_dir, tmp_path, request):
    damage, message = DAMAGE[request.param]
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    damage(d)
    return d, message


@pytest.mark.parametrize("damaged", list(DAMAGE), indirect=True)
def test_run_names_the_damaged_model(capsys, tmp_path, damaged):
    model, message = damaged
    out = tmp_path / "never"
    err = one_line_error(capsys, ["run", "--model", str(model), "--lengths", "256", "--depths", "50",
                                  "--out", str(out)])
    assert message in err and str(model) in err
    assert not out.exists()


@pytest.mark.parametrize("damaged", ["truncated weights", "positions as text", "no tokenizer"], indirect=True)
def test_train_names_the_damaged_base(capsys, tmp_path, damaged, shards):
    model, message = damaged
    out = tmp_path / "never"
    err = one_line_error(capsys, ["train", "--base", str(model), "--data", str(shards), "--seq-len", "128",
                                  "--tokens", "10k", "--dtype", "fp32", "--out", str(out)])
    assert err.startswith("error: --base: ") and message in err
    assert not out.exists()
