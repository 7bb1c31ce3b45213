import json

import pytest

from harness import models
from harness.errors import UserError


def test_embedded_smollm2_is_a_bf16_hf_directory(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["max_position_embeddings"] == 8192
    assert config["dtype"] == "bfloat16" and "quantization_config" not in config
    assert list(smollm2_dir.glob("*.safetensors")) and (smollm2_dir / "tokenizer.json").is_file()
    assert models.resolve("smollm2-135m") == smollm2_dir  # cached: no second conversion


def test_rope_overrides_are_applied_and_recorded(tiny_model_dir):
    plain = models.load(str(tiny_model_dir), dtype="fp32")
    assert plain.info["rope_parameters"]["rope_theta"] == 10000.0
    assert plain.max_positions == 2048
    scaled = models.load(str(tiny_model_dir), rope_theta=5e5, rope_scaling=("linear", 4.0), dtype="fp32")
    rope = scaled.info["rope_parameters"]
    assert rope["rope_theta"] == 5e5 and rope["rope_type"] == "linear" and rope["factor"] == 4.0
    assert scaled.model.config.rope_parameters["rope_theta"] == 5e5
    assert scaled.max_positions == 4 * 2048
    # The override reaches the rotary embedding the model actually uses.
    inv_plain = plain.model.model.rotary_emb.inv_freq
    inv_scaled = scaled.model.model.rotary_emb.inv_freq
    assert float(inv_scaled[1]) < float(inv_plain[1])


@pytest.mark.parametrize("text", ["linear", "foo:2", "linear:0.5", "yarn:x", ":4"])
def test_bad_rope_scaling(text):
    with pytest.raises(UserError, match="--rope-scaling"):
        models.parse_rope_scaling(text)


def test_resolve_rejects_non_model_paths(tmp_path):
    with pytest.raises(UserError, match="neither a known model"):
        models.resolve(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="no config.json"):
        models.resolve(str(tmp_path))
