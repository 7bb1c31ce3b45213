"""Where one call's time goes: torch.profiler's top rows, as dicts and as a markdown table.

On CUDA the rows are ranked by self device time (the kernels: an operator's own device time is
what its kernels do not account for, usually zero), with the CPU's activity recorded too (a
"Command Buffer Full" wait shows there, not in the ranking). On a CPU they are ranked by self CPU
time (the operators: aten::mm and the like).
"""

from __future__ import annotations

from typing import Any, Callable

NAME_CHARS = 90


def top_kernels(fn: Callable[[], Any], device, rows: int = 15) -> list[dict]:
    """Run ``fn()`` once under torch.profiler and return its top ``rows`` rows by self device time
    on a CUDA device (self CPU time elsewhere), largest first: ``name`` (at most NAME_CHARS
    characters), ``calls``, ``self_ms``, ``share_pct`` (of the self time summed over every row).
    On CUDA the device is synchronized before the profile starts and before it ends, so the
    kernels ``fn`` queued are all in it."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize(device)
    return ranked(prof.key_averages(), _device_self if cuda else _cpu_self, rows)


def _device_self(event) -> float:
    """Self device time in microseconds (``self_cuda_time_total`` before torch named it device)."""
    value = getattr(event, "self_device_time_total", None)
    return float(value if value is not None else event.self_cuda_time_total)


def _cpu_self(event) -> float:
    return float(event.self_cpu_time_total)


def ranked(events, self_us: Callable[[Any], float], rows: int) -> list[dict]:
    """The ``rows`` events (profiler averages: ``key``, ``count``) with the most ``self_us``, as
    table rows; events with none are left out, and shares are of the total over all of them."""
    timed = sorted((e for e in events if self_us(e) > 0), key=self_us, reverse=True)
    total = sum(self_us(e) for e in timed)
    return [{"name": _short(e.key), "calls": int(e.count), "self_ms": round(self_us(e) / 1e3, 3),
             "share_pct": round(100.0 * self_us(e) / total, 1)} for e in timed[:rows]]


def _short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[:NAME_CHARS - 3] + "..."


def table(rows: list[dict]) -> str:
    """``rows`` (from :func:`top_kernels`) as a markdown table, one line a row."""
    lines = ["| name | calls | self ms | share % |", "|---|---:|---:|---:|"]
    for r in rows:
        name = r["name"].replace("|", "\\|")
        lines.append(f"| `{name}` | {r['calls']} | {r['self_ms']:.3f} | {r['share_pct']:.1f} |")
    return "\n".join(lines)
