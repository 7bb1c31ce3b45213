"""Experiment tracking: a job's numbers in TensorBoard (always: event files in its directory) and in
Weights & Biases (``--wandb PROJECT``), beside the files the job writes itself.

Evaluation logs each summary number (``eval/SUITE/SLICE/METRIC``) at a step (0 for ``harness run``;
the training step when the Python API evaluates inside a training loop) and, in W&B, the summary
as a table; training logs its per-step metrics (``train/loss``, ``train/lr``, ...). W&B follows its
own environment: ``WANDB_MODE=offline`` writes the run under ``DIR/wandb/`` for a later
``wandb sync``; ``WANDB_API_KEY`` or ``wandb login`` for the hosted service.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from harness.errors import UserError

WANDB_HINT = "pip install 'longctx-harness[track]' (or: pip install wandb)"


def check_wandb(project: str | None, flag: str = "--wandb") -> None:
    """A W&B project name W&B accepts, with wandb installed; checked before anything runs."""
    if project is None:
        return
    if importlib.util.find_spec("wandb") is None:
        raise UserError(f"{flag}: the wandb package is not installed; {WANDB_HINT}")
    if not project or len(project) > 128 or re.search(r"[/\\#?%:\s]", project):
        raise UserError(f"{flag}: {project!r} is not a W&B project name (1-128 characters, none of / \\ # ? % : "
                        f"or spaces)")


class Tracker:
    """One job's trackers; rank 0 only (other ranks make none)."""

    def __init__(self, out: Path, *, name: str, config: dict, job_type: str, wandb_project: str | None = None):
        self.out = Path(out)
        self.tb = None   # opened at the first value: a run writes nothing of its own before its first cell
        self.wb = None
        if wandb_project is not None:
            self.wb = _start_wandb(Path(out), wandb_project, name, config, job_type)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tensorboard"))
        for key, value in values.items():
            if value is not None:
                self.tb.add_scalar(key, float(value), step)
        if self.wb is not None:
            self.wb.log({k: v for k, v in values.items() if v is not None}, step=step)

    def summary(self, rows: list[dict], step: int = 0) -> None:
        """Evaluation summary rows (suite, slice, metric, value, stderr, low, high)."""
        values = {f"eval/{r['suite']}/{r['slice']}/{r['metric']}": r["value"] for r in rows}
        self.scalars(values, step)
        if self.wb is not None:
            import wandb

            columns = ["suite", "slice", "metric", "value", "stderr", "low", "high"]
            self.wb.log({"eval/summary": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])},
                        step=step)
            for key, value in values.items():
                self.wb.summary[key] = value

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()
            self.wb = None


def _start_wandb(out: Path, project: str, name: str, config: dict, job_type: str):
    import wandb

    try:
        return wandb.init(project=project, name=name, dir=str(out), config=config, job_type=job_type,
                          reinit="create_new", settings=wandb.Settings(console="off", silent=True))
    except Exception as exc:  # wandb raises its own UsageError, CommError, ... (one line each here)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"--wandb: W&B did not start ({first}); log in (`wandb login` or WANDB_API_KEY) "
                        f"or set WANDB_MODE=offline") from None
