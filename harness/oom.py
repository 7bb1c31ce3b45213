"""Out of memory on a GPU is a cell's fault, or a training step's; never a crash with a traceback.

Evaluation: a cell that does not fit is stored with ``status: "oom"``, its length and the peak
memory it reached, and no score (missing data, never a 0: the store keeps such lines out of every
score, harness.store); the grid goes on with the other cells. The hf backend, which owns the
prefill chunk, first retries the prompt once on a cache of its own with a smaller chunk
(harness.backends.hf). Training: a step that does not fit ends the run with one line (exit 1: the
machine, not the input) naming the step, the sequence length, the peak and what to change; the
last checkpoint is kept and ``--resume`` continues from it (harness.trainer.loop).

``HARNESS_OOM_AT=SPEC[,SPEC]`` raises ``torch.cuda.OutOfMemoryError`` where a real one would come
from (the tests' fault injection, on CPU too): ``eval:N`` in every forward of the hf backend on a
prompt of N tokens (a needle cell's length under ``--protocol exact``); ``eval:N>C`` only in a
forward of more than C tokens at once (a prefill chunk too large for the memory); ``step:K`` in
training step K.
"""

from __future__ import annotations

import dataclasses
import gc
import os

import torch

from harness.memory import GIB
from harness.store import OOM

Error = torch.cuda.OutOfMemoryError   # torch.OutOfMemoryError: what CUDA's allocator raises


class CellOutOfMemory(Error):
    """Requests ``indices`` of one ``generate_many`` call did not fit, after the backend's retry.
    The backend has dropped its cache before raising; ``peak_gib``: the most memory they reached."""

    def __init__(self, message: str, indices: list[int], peak_gib: float | None):
        super().__init__(message)
        self.indices, self.peak_gib = list(indices), peak_gib


def inject(point: str, value: int, tokens: int = 0) -> None:
    """Raise an out-of-memory error here if ``HARNESS_OOM_AT`` names this point (see above)."""
    spec = os.environ.get("HARNESS_OOM_AT")
    for item in spec.split(",") if spec else ():
        name, _, rest = item.strip().partition(":")
        at, _, above = rest.partition(">")
        if name == point and int(at) == value and tokens > int(above or -1):
            raise Error(f"CUDA out of memory (injected: HARNESS_OOM_AT={spec})")


def free() -> None:
    """Give back what a failed cell or step left: unreachable tensors, then CUDA's cached blocks.
    Call it outside the ``except`` block: the traceback holds the frames, and their tensors."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_gib(error: BaseException | None = None) -> float | None:
    """The peak a failed cell reached: the backend's measurement when it raised one, else CUDA's
    ``max_memory_allocated`` (None without CUDA)."""
    measured = getattr(error, "peak_gib", None)
    if measured is not None:
        return measured
    return torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else None


def record(cell, error: BaseException) -> dict:
    """The store's line for a cell that did not fit: the cell's own fields (suite, key, length, ...),
    ``status: "oom"``, no score, the peak it reached and the error's first line."""
    peak = peak_gib(error)
    out = {**dataclasses.asdict(cell), "status": OOM, "score": None,
           "error": (str(error).strip().splitlines() or [type(error).__name__])[0][:300]}
    if peak is not None:
        out["peak_gib"] = round(peak, 3)
    return out
