"""Faults, class "untrusted files": nothing read from a checkpoint, a run directory or a flag runs
code. Optimizer and RNG state load with weights_only=True (a crafted pickle is refused, its payload
never runs); the code holds no eval/exec, shell strings, trust_remote_code or unsafe YAML loads.
(Names read from run files stay inside their directory: test_faults_stores.)"""

import os
import re
from pathlib import Path

import pytest
import torch

from harness.errors import UserError
from harness.trainer import loop

ROOT = Path(__file__).resolve().parents[1]
UNSAFE = {
    "weights_only=False": re.compile(r"weights_only\s*=\s*False"),
    "eval()/exec()": re.compile(r"(?<![\w.])(eval|exec)\("),
    "shell=True": re.compile(r"shell\s*=\s*True"),
    "os.system": re.compile(r"os\.system\("),
    "trust_remote_code=True": re.compile(r"trust_remote_code\s*=\s*True"),
    "yaml.load (not safe_load)": re.compile(r"yaml\.(load|unsafe_load)\("),
    "pickle.load": re.compile(r"pickle\.loads?\("),
}


@pytest.mark.parametrize("what", list(UNSAFE))
def test_no_code_runs_from_what_a_user_hands_in(what):
    hits = [f"{path.relative_to(ROOT)}:{n}" for folder in ("harness", "tasks", "trainer", "reports")
            for path in sorted((ROOT / folder).rglob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), 1) if UNSAFE[what].search(line)]
    assert hits == [], f"{what} in {hits}"


class _Payload:
    """A pickle that runs code when unpickled: what a checkpoint from someone else could hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_refuses_a_checkpoint_that_would_run_code(tiny_model_dir, shards, tmp_path):
    cfg = loop.TrainConfig(base=str(tiny_model_dir), data=str(shards), out=str(tmp_path / "run"), seq_len=128,
                           tokens=128 * 4 * 8, batch_tokens=128 * 4, save_every=2, lr=3e-3, warmup_steps=1, dtype="fp32",
                           grad_ckpt=False)
    loop.train(cfg, stop_after=2)
    ckpt = tmp_path / "run" / "checkpoints" / "step-000002"
    for name in ("optimizer.pt", "rng.pt"):
        saved = (ckpt / name).read_bytes()
        marker = tmp_path / f"ran-{name}"
        torch.save({"optimizer": _Payload(marker), "torch": _Payload(marker)}, ckpt / name)
        with pytest.raises(UserError, match=f"{name} cannot be loaded safely"):
            loop.train(cfg, resume=True)
        assert not marker.exists()
        (ckpt / name).write_bytes(saved)
    loop.train(cfg, resume=True)   # the genuine files load (tensors, numbers and containers only)
    assert (tmp_path / "run" / "final").is_dir()
