"""Faults, class "concurrency": one writer per run, build, training and ablation directory. A
second writer is refused with one line naming the holder's PID; a dead holder leaves no stale
lock; never interleaved writes (every cell exactly once)."""

import json
import subprocess
import sys
import time

import pytest

from harness import rundir
from harness.errors import UserError
from tests.conftest import harness_cli


def test_a_directory_lock_refuses_another_process_and_dies_with_its_holder(tmp_path):
    target = tmp_path / "build"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from harness import rundir\n"
        f"with rundir.locked({str(target)!r}, 'a build'):\n"
        "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"another process \(pid {holder.pid}\) is writing a build there"):
            with rundir.locked(target, "a build"):
                pass
        assert not target.exists()           # nothing created inside before the work starts
    finally:
        holder.kill()
        holder.wait()
    with rundir.locked(target, "a build"):   # a killed holder leaves no stale lock
        with rundir.locked(target, "a build"):   # re-entrant in one process
            pass


def test_a_cache_directory_lock_waits_for_its_holder(tmp_path):
    """A build the harness keeps in its cache has no --out to change: a second process waits (and
    then finds the build done) instead of being refused."""
    target = tmp_path / "cached-build"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from harness import rundir\n"
        f"with rundir.locked({str(target)!r}, 'a build'):\n"
        "    print('held', flush=True); time.sleep(1)\n"
        "print('released', flush=True)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with rundir.locked(target, "a build", wait=True):
            assert holder.stdout.readline().strip() == "released"
    finally:
        holder.kill()
        holder.wait()


def test_two_runs_into_one_out_one_is_refused_every_cell_once(tiny_model_dir, tmp_path):
    out = tmp_path / "shared"
    args = ["run", "--model", str(tiny_model_dir), "--suite", "needle", "--lengths", "256,512,1k",
            "--depths", "0,50,100", "--protocol", "exact", "--dtype", "fp32", "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-m", "harness", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lock = tmp_path / ".shared.lock"
    deadline = time.time() + 120
    while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
        assert time.time() < deadline and first.poll() is None, "the first run never took its lock"
        time.sleep(0.05)
    second = harness_cli(*args)
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"another process (pid {first.pid}) is writing a run there" in lines[0]
    assert first.wait(timeout=600) == 0, first.stderr.read()
    keys = [json.loads(line)["key"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 9
    again = harness_cli(*args)     # the lock went with its process: a rerun resumes
    assert again.returncode == 0 and "0 to run" in again.stderr


def test_two_data_builds_into_one_out_never_collide(smollm2_dir, tmp_path):
    """The second build is refused while the first holds the directory, or finds it finished; either
    way one complete build, no traceback (two builds used to race renaming the tokenization cache)."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": "word " * 300 + str(i), "domain": "book"}) + "\n" for i in range(300)))
    out = tmp_path / "data"
    args = [sys.executable, "-m", "harness", "data", "build", "--source", f"jsonl:{docs}", "--strategy", "cut_4k",
            "--tokens", "50k", "--seq-len", "1k", "--tokenizer", str(smollm2_dir), "--out", str(out)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert all("Traceback" not in err for _, err in results), results
    assert sorted(rc for rc, _ in results) in ([0, 0], [0, 2]), results
    for rc, err in results:
        if rc == 2:
            assert "another process" in err.strip().splitlines()[-1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sequences"] > 0 and sorted(p.name for p in (out / "shards").iterdir()) == manifest["shards"]
