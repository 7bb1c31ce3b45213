"""Faults, class "training resume": every step logged once; a finished run stays finished; a run
killed before its first checkpoint starts again without anyone deleting it; a damaged checkpoint is
named and the one before it used; a moved run directory resumes."""

import io
import json
import shutil

import pytest
from rich.console import Console

from harness.errors import UserError
from harness.trainer import loop

SMALL = dict(seq_len=128, tokens=128 * 4 * 8, batch_tokens=128 * 4, lr=3e-3, warmup_steps=1, dtype="fp32",
             grad_ckpt=False)  # 8 steps of 4 sequences


def _cfg(base, data, out, **kw):
    return loop.TrainConfig(base=str(base), data=str(data), out=str(out), **{**SMALL, **kw})


def _steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_run_killed_before_its_first_checkpoint_starts_again(tiny_model_dir, shards, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(tiny_model_dir, shards, out)  # save_every 0: the final checkpoint only
    assert loop.train(cfg, stop_after=3) is None
    assert _steps(out) == [1, 2, 3] and not (out / "final").exists()
    assert loop.train(cfg) == out / "final"  # a plain rerun: no "add --resume", no "delete it"
    assert _steps(out) == list(range(1, 9))


def test_resume_from_nothing_saved_also_starts_again(tiny_model_dir, shards, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(tiny_model_dir, shards, out)
    loop.train(cfg, stop_after=2)
    assert loop.train(cfg, resume=True) == out / "final"
    assert _steps(out) == list(range(1, 9))


def test_a_finished_run_is_left_as_it_is(tiny_model_dir, shards, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(tiny_model_dir, shards, out, save_every=4)
    final = loop.train(cfg)
    before = {p.name: p.stat().st_mtime_ns for p in final.iterdir()}
    metrics = (out / "metrics.jsonl").read_bytes()
    for resume in (False, True):
        assert loop.train(cfg, resume=resume) == final
    assert {p.name: p.stat().st_mtime_ns for p in final.iterdir()} == before
    assert (out / "metrics.jsonl").read_bytes() == metrics


def _truncate(name):
    def damage(ckpt):
        f = ckpt / name
        f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 3)])
    return damage


def _garbage_state(ckpt):
    (ckpt / "trainer_state.json").write_text("{\"step\": ")


DAMAGE = {"weights": (_truncate("model.safetensors"), "model.safetensors is damaged"),
          "optimizer": (_truncate("optimizer.pt"), "optimizer.pt cannot be loaded"),
          "rng": (_truncate("rng.pt"), "rng.pt cannot be loaded"),
          "trainer state": (_garbage_state, "trainer_state.json is damaged")}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_named_and_the_one_before_used(tiny_model_dir, shards, tmp_path, damage):
    out = tmp_path / "run"
    cfg = _cfg(tiny_model_dir, shards, out, save_every=2)
    loop.train(cfg, stop_after=5)  # checkpoints at steps 2 and 4, step 5 logged
    spoil, message = DAMAGE[damage]
    spoil(out / "checkpoints" / "step-000004")
    console = Console(file=io.StringIO(), width=1000)
    assert loop.train(cfg, resume=True, console=console) == out / "final"
    said = console.file.getvalue()
    assert message in said and "trying the checkpoint before it" in said and "from step-000002" in said
    assert _steps(out) == list(range(1, 9))  # 3..5 redone once each


def test_every_checkpoint_damaged_is_one_clear_error(tiny_model_dir, shards, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(tiny_model_dir, shards, out, save_every=2)
    loop.train(cfg, stop_after=4)
    for step in (2, 4):
        _truncate("model.safetensors")(out / "checkpoints" / f"step-00000{step}")
    with pytest.raises(UserError, match=r"no checkpoint in .* loads \(2 damaged; the newest: .*step-000004"):
        loop.train(cfg, resume=True)


def test_a_moved_run_directory_resumes(tiny_model_dir, shards, tmp_path):
    first = tmp_path / "here"
    loop.train(_cfg(tiny_model_dir, shards, first, save_every=2), stop_after=2)
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(first, moved)
    assert loop.train(_cfg(tiny_model_dir, shards, moved, save_every=2), resume=True) == moved / "final"
    assert _steps(moved) == list(range(1, 9))


def test_a_run_recorded_with_its_path_in_the_key_still_resumes(tiny_model_dir, shards, tmp_path):
    """Runs written before the key left out --out hold it in train_config.json: still theirs."""
    from harness import rundir

    out = tmp_path / "old"
    cfg = _cfg(tiny_model_dir, shards, out, save_every=2)
    loop.train(cfg, stop_after=2)
    record = rundir.read_json(out / "train_config.json", "test")
    config = {**record["config"], "out": str(out)}
    rundir.write_json(out / "train_config.json", {**record, "config": config, "config_hash": rundir.config_hash(config)})
    assert loop.train(cfg, resume=True) == out / "final"


DS_RESUME = """
import io, json, sys
from pathlib import Path
from rich.console import Console
from harness.trainer import loop

base, data, out, small = sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
cfg = loop.TrainConfig(base=base, data=data, out=str(out), engine="deepspeed", save_every=2, **small)
loop.train(cfg, stop_after=5)  # checkpoints at steps 2 and 4, step 5 logged
losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
damaged = next((out / "checkpoints" / "step-000004" / "deepspeed" / "state").glob("*optim_states.pt"))
damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 3])
console = Console(file=io.StringIO(), width=1000)
final = loop.train(cfg, resume=True, console=console)
print(json.dumps({"final": str(final), "said": console.file.getvalue(), "losses": losses, "damaged": str(damaged)}))
"""


def test_a_damaged_deepspeed_checkpoint_is_named_and_the_one_before_used(tiny_model_dir, shards, tmp_path):
    """ZeRO-3 on one CPU process (in its own interpreter: DeepSpeed sets up a process group): the
    newest checkpoint's ZeRO optimizer partition truncated. DeepSpeed's own error names no file; the
    engine names it, and the run continues from the checkpoint before with the same losses."""
    pytest.importorskip("deepspeed")
    import os
    import subprocess
    import sys

    out = tmp_path / "ds"
    small = {**SMALL, "tokens": 128 * 4 * 6}  # 6 steps
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-c", DS_RESUME, str(tiny_model_dir), str(shards), str(out), json.dumps(small)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    said = got["said"]
    assert f"{got['damaged']} cannot be loaded" in said and "trying the checkpoint before it" in said
    assert "from step-000002" in said and got["final"] == str(out / "final")
    assert _steps(out) == list(range(1, 7))  # 3..5 redone once each
    redone = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert redone[:5] == pytest.approx(got["losses"], abs=1e-5)  # as if never interrupted
