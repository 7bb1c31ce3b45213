"""bench/gpu_check.py --smoke: every phase's plumbing on CPU at tiny shapes, run from the bundle
(bench/gpu_bundle.py) in an interpreter that sees only what a GPU machine with torch and
transformers has plus what the bundle brings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_bundle  # noqa: E402

sys.path.pop(0)

from tests.conftest import run_main  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The bundle's files (the wheels are downloaded by hand: no network here), built by the
    script's own command line in this interpreter (its smoke below runs in a restricted one)."""
    out = tmp_path_factory.mktemp("bundle") / "b"
    run_main(gpu_bundle, "--out", str(out), "--no-wheels")
    return out


def user_root(tmp_path_factory) -> Path:
    """pytest's per-user temp root (kept across sessions); under xdist a worker's base is one deeper."""
    base = tmp_path_factory.getbasetemp()
    return base.parent.parent if os.environ.get("PYTEST_XDIST_WORKER") else base.parent


def machine_site(root: Path, allowed: set[str] | None = None) -> Path:
    """A site directory holding only what the GPU machine has and what the bundle's wheels install
    (``allowed``, normalized names; default: this bundle's): links to those distributions' files here.

    It sits under ``root`` (pytest's per-user temp root), named by what it links (each distribution's
    name, version and place, and this interpreter), made once and reused: the smoke's modules keep
    their paths from run to run, and inductor's cache, whose keys hold the paths of the code it
    compiles, then serves the smoke's compiles as it serves the rest of the suite's (the flex phase:
    35 s at a new site, 9 s at a reused one, on a 2-core Xeon). A site is complete once it has its name."""
    import hashlib
    import importlib.metadata
    import shutil
    import tempfile

    allowed = allowed if allowed is not None else gpu_bundle.on_machine() | set(gpu_bundle.BUNDLED)
    dists = [d for d in importlib.metadata.distributions() if gpu_bundle._norm(d.metadata["Name"]) in allowed]
    key = json.dumps([sys.prefix, sys.version, sorted((d.metadata["Name"], d.version, str(d.locate_file("")))
                                                     for d in dists)])
    dest = root / f"machine-site-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if dest.is_dir():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}.", dir=root))
    for dist in dists:
        base = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            if top in ("..", "__pycache__") or (tmp / top).exists() or not (base / top).exists():
                continue
            (tmp / top).symlink_to(base / top)
    try:
        tmp.rename(dest)
    except OSError:   # another session made it meanwhile: the same links
        shutil.rmtree(tmp)
    return dest


@pytest.fixture(scope="module")
def smoke(bundle, tmp_path_factory):
    """run.sh --smoke in an interpreter that sees the standard library, the machine's set and the
    bundle, nothing else (python -S: no site-packages; PYTHONPATH: the links above)."""
    root = tmp_path_factory.mktemp("gpu-check")
    site = machine_site(user_root(tmp_path_factory))
    env = {**os.environ, "PYTHON": f"{sys.executable} -S", "PYTHONPATH": str(site), "OUT": str(root / "out")}
    proc = subprocess.run(["sh", str(bundle / "run.sh"), "--smoke"], capture_output=True, text=True, timeout=900,
                          env=env, cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "out"


def read(out: Path, phase: str) -> dict:
    record = json.loads((out / "check.json").read_text())[phase]
    assert record["ok"], record.get("traceback")
    return record


def test_every_phase_runs_with_only_the_bundle_and_records_its_figures(smoke):
    out = smoke
    assert sorted(p.name for p in out.iterdir()) == ["check.json", "summary.md"]   # what the machine hands back
    env = read(out, "env")
    assert env["attention"]["eval"] == "sdpa" and env["measured_peak_tflops"] > 0
    prefill = read(out, "prefill")   # the plain forward against the backend's variants, agreeing
    (row,) = prefill["rows"]
    variants = [v for v in row.values() if isinstance(v, dict)]
    assert len(variants) == 3 and all(v["seconds"] > 0 and v["chunk"] > 0 for v in variants)
    assert max(v["target_logprob"] for v in variants) - min(v["target_logprob"] for v in variants) < 2e-2
    decode = read(out, "decode")
    assert all(r["split"]["ms_per_token"] > 0 and r["plain"]["ms_per_token"] > 0 for r in decode["rows"])
    profile = read(out, "profile")   # the top kernels of a prefill chunk and a decode step: matmuls among them
    assert all(any(k["name"] == "aten::mm" for k in profile[part]) for part in ("prefill_chunk", "decode_step"))
    ev = read(out, "eval")
    assert len(ev["cells"]) == 9 and all(c["peak_gib"] > 0 and c["seconds"] > 0 for c in ev["cells"])
    assert sum(c["reused_tokens"] for c in ev["cells"]) > 0          # the prefix tree shared the haystack
    assert ev["exactness"]["identical_outputs"] == ev["exactness"]["cells"] == 3
    # fp32: the tree's arithmetic is the per-prompt one to rounding; bf16 rounds at 2^-8 (0.004 seen on an
    # AMX CPU, whose oneDNN kernels group the sums differently from AVX512-BF16 ones).
    assert ev["exactness"]["max_abs_logprob_diff"] < (1e-3 if ev["dtype"] == "float32" else 2e-2)
    grid = ev["paper_grid"]
    assert (grid["cells"], grid["lengths"], grid["depths"]) == (400, 40, 10) and grid["estimated_seconds"] > 0
    assert grid["new_tokens"] == 50 and grid["prefill_seconds"] > 0 and grid["decode_seconds"] > 0
    assert all(0 < c["decode_seconds"] < c["seconds"] for c in ev["cells"])
    train = read(out, "train")
    assert [(r["seq_len"], r["doc_mask"]) for r in train["runs"]] == [(256, False), (256, True)]
    for run in train["runs"]:
        assert run["finite"] and run["steps"] == 2 and run["peak_gib"] > 0 and 0 < run["mfu_measured"] < 1
    assert any(k["name"] == "aten::mm" for k in train["profile"])
    big = read(out, "train7b")   # the smoke runs both engines: the torch one and ZeRO-3 with the optimizer offloaded
    assert [r["engine"] for r in big["runs"]] == ["torch", "deepspeed"] and all(r["finite"] for r in big["runs"])
    flex = read(out, "flex")   # a 40-token prompt: under one block (CPU pads it: harness/flex_cpu.py)
    assert [r["length"] for r in flex["lengths"]] == [40]
    assert all(r["finite"] and r["same_greedy_tokens"] and r["max_abs_logit_diff"] < 0.1 for r in flex["lengths"])
    assert all(r["greedy_tokens"] == 2 for r in flex["lengths"])   # the prompt's token and one decode step
    ds = read(out, "ds")
    assert ds["steps"] == 2 and ds["changed_tensors"] > 0 and "model.safetensors" in ds["checkpoint_files"]
    summary = (out / "summary.md").read_text()
    assert "paper grid (400 cells)" in summary and "ZeRO-3" in summary


def test_the_bundle_without_wheels_is_small_and_complete(bundle):
    """Project, tokenizer, haystack, 32K shards, the check and its runner; no weights."""
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    assert manifest["bytes"] < 16 * 1024 ** 2
    names = set(manifest["files"])
    assert {"tokenizer/tokenizer.json", "haystack.txt", "gpu_check.py", "run.sh", "shards/manifest.json",
            "project/harness/backends/kv_cache.py", "project/harness/tasks/needle.yaml",
            "project/harness/trainer/ds_zero3.json"} <= names
    assert not any(n.endswith((".safetensors", ".gguf", ".bin")) for n in names)   # no weights
