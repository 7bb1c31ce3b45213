"""Faults, class "disk full": on a small tmpfs, `run`, `data build` and training checkpoints end
with one line naming the error (exit 1), keep the last complete state (no half directory, no torn
result line, the previous checkpoint intact), and resume once space is back.

Needs root to mount a tmpfs; skipped with the reason otherwise (CI runs as root)."""

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import harness_cli


@pytest.fixture
def small_disk(tmp_path):
    """A 256 MB tmpfs and a function that fills it up to ``free`` bytes left."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")

    def fill(free: int) -> None:
        blob = mount / "fill"
        blob.unlink(missing_ok=True)
        have = shutil.disk_usage(mount).free
        with open(blob, "wb") as fh:
            fh.truncate(0)
            fh.write(b"\0" * max(0, have - free))
        assert shutil.disk_usage(mount).free <= free + 8192

    def release() -> None:
        (mount / "fill").unlink(missing_ok=True)

    yield mount, fill, release
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _one_os_line(proc) -> str:
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and last.startswith("error: ") and "No space left on device" in last, proc.stderr
    return last


def _run_args(model, out):
    return ["run", "--model", str(model), "--lengths", "256:1k:4", "--depths", "0:100:5", "--protocol", "exact",
            "--dtype", "fp32", "--out", str(out)]


def test_a_run_on_a_full_disk(tiny_model_dir, small_disk):
    mount, fill, release = small_disk
    fill(0)
    out = mount / "run"
    _one_os_line(harness_cli(*_run_args(tiny_model_dir, out)))
    assert not out.exists()  # no run directory without its manifest


def test_a_run_that_fills_the_disk_resumes_with_every_cell_once(tiny_model_dir, small_disk):
    mount, fill, release = small_disk
    fill(3 * 4096)  # a page each for the lock, the manifest and some results
    out = mount / "run"
    _one_os_line(harness_cli(*_run_args(tiny_model_dir, out)))
    data = (out / "results.jsonl").read_bytes()
    assert data.endswith(b"\n") and 0 < data.count(b"\n") < 20  # whole lines only: no torn record
    release()
    proc = harness_cli(*_run_args(tiny_model_dir, out))
    assert proc.returncode == 0, proc.stderr
    keys = [json.loads(line)["key"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(keys) == 20 and len(set(keys)) == 20


def test_a_data_build_on_a_full_disk_leaves_no_half_build(smollm2_dir, small_disk, tmp_path):
    mount, fill, release = small_disk
    f = tmp_path / "docs.jsonl"
    f.write_text("".join(json.dumps({"text": "word " * 400 + str(i), "domain": "book"}) + "\n" for i in range(400)))
    fill(8 * 4096)
    out = mount / "data"
    _one_os_line(harness_cli("data", "build", "--source", f"jsonl:{f}", "--strategy", "cut_4k", "--tokens", "150k",
                             "--seq-len", "1k", "--tokenizer", str(smollm2_dir), "--out", str(out)))
    assert not out.exists()


def test_a_checkpoint_on_a_full_disk_keeps_the_one_before(tiny_model_dir, shards, small_disk):
    mount, fill, release = small_disk
    out = mount / "train"
    args = ["train", "--base", str(tiny_model_dir), "--data", str(shards), "--seq-len", "128", "--tokens", "4096",
            "--batch-tokens", "512", "--save-every", "2", "--dtype", "fp32", "--no-grad-ckpt", "--out", str(out)]
    fill(48 * 1024**2)  # room for one checkpoint (weights and AdamW state of the 3M-parameter model), not two
    _one_os_line(harness_cli(*args))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002"]  # no half checkpoint
    release()
    proc = harness_cli(*args, "--resume")
    assert proc.returncode == 0 and "from step-000002" in proc.stderr, proc.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
