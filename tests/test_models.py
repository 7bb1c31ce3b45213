import json
import os

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


def _hub_cache(root, repo: str, source) -> str:
    """An HF hub cache holding ``source``'s files as ``repo`` at one commit (the layout
    huggingface_hub writes: blobs, snapshots/<commit>/ links, refs/main)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for f in source.iterdir():
        if f.is_file() and f.name != "SOURCE.json":
            blob = repo_dir / "blobs" / f.name
            blob.symlink_to(f)
            (snap / f.name).symlink_to(blob)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return commit


def test_hub_id_in_the_local_cache_runs_offline(tmp_path, smollm2_dir):
    from tests.conftest import harness_cli

    cache = tmp_path / "hub"
    commit = _hub_cache(cache, "HuggingFaceTB/SmolLM2-135M", smollm2_dir)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "run"
    proc = harness_cli("run", "--model", "HuggingFaceTB/SmolLM2-135M", "--lengths", "256", "--depths", "50",
                       "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["model"]["id"] == f"HuggingFaceTB/SmolLM2-135M@{commit}"
    assert manifest["model"]["name"] == "SmolLM2-135M"
    assert len((out / "results.jsonl").read_text().splitlines()) == 1
    # Not cached while offline: one line naming the cache and what to do, nothing made.
    missing = harness_cli("run", "--model", "HuggingFaceTB/SmolLM2-360M", "--out", str(tmp_path / "x"), env=env)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    (line,) = missing.stderr.strip().splitlines()
    assert "'HuggingFaceTB/SmolLM2-360M' is not in the Hugging Face cache" in line and "HF_HUB_OFFLINE=1" in line
    assert str(cache) in line and not (tmp_path / "x").exists()


@pytest.mark.parametrize("spec, hub", [("org/name", True), ("org/name@v1.0", True), ("./org/name", False),
                                       ("/abs/path", False), ("a/b/c", False), ("name", False), ("~/x", False)])
def test_hub_ids_are_told_from_paths(spec, hub):
    assert models.is_hub_id(spec) is hub
