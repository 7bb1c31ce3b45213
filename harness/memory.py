"""Peak memory over a stretch of work, per device: what a cell, a step or a bench phase needed.

CUDA: the peak of memory allocated to tensors on the device (``torch.cuda.max_memory_allocated``,
reset at the start). CPU: the process's peak resident set (``VmHWM``), reset at the start by
writing 5 to ``/proc/self/clear_refs`` (Linux); it includes the weights and everything else the
process holds, so it reads as "the process needed this much", not as the cell's own tensors.
Where neither is possible (another OS), the lifetime peak (``ru_maxrss``) is reported instead,
and :attr:`PeakMemory.kind` says so.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

GIB = 1024 ** 3
_CLEAR = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


class PeakMemory:
    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        if self.device.type == "cuda":
            self.kind = "cuda max_memory_allocated"
        elif _resettable():
            self.kind = "process peak RSS (VmHWM, reset per measurement)"
        else:
            self.kind = "process peak RSS since start (ru_maxrss)"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif _resettable():
            _CLEAR.write_text("5")

    def gib(self) -> float:
        """The peak since the last :meth:`reset`, in GiB."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / GIB
        if _resettable():
            for line in _STATUS.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / GIB
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / GIB


_RESETTABLE: bool | None = None


def _resettable() -> bool:
    global _RESETTABLE
    if _RESETTABLE is None:
        try:
            _CLEAR.write_text("5")
            _RESETTABLE = "VmHWM:" in _STATUS.read_text()
        except OSError:
            _RESETTABLE = False
    return _RESETTABLE
