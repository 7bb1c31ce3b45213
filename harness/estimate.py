"""Time estimates for a grid: FLOPs as the backend computes them, over a throughput remembered for
this machine.

FLOPs: each cell's prefill from the tokens its backend reuses (a needle grid's prompts of one
length share the haystack up to each needle: the prefix tree computes every edge once, see
``Suite.prefill_spans``), plus its decoding. Throughput: the effective FLOP/s (counted FLOPs over
wall seconds) of earlier runs on this machine, backend, dtype, suite and model, kept in the user cache;
with none yet, the measured GEMM peak times ``FIRST_EFFICIENCY``, and the estimate says so.
"""

from __future__ import annotations

import json
import os
import platform
from collections import Counter
from pathlib import Path

from filelock import FileLock

from harness import flops, rundir
from harness.paths import cache_dir

# Effective FLOP/s over the GEMM peak, measured on the quick needle grid (hf backend, SmolLM2-135M,
# reference protocol, bf16 on a 2-vCPU AMD EPYC with avx512_bf16: 35.8 TFLOP counted with the
# prefix tree in 406 s of cells, peak 0.41 TFLOP/s): 0.21. Another machine, model or suite differs:
# the first estimate there is rough, and every run sharpens the remembered rate.
FIRST_EFFICIENCY = 0.21
KEEP = 0.5   # weight of the newest run in the remembered rate (an exponential average)

# Planning rates for a named GPU before one is lent (`harness ablate --plan`; the mini preset plans
# for one H200), measured on one H200 on 2026-12-04 by `harness ablate --preset mini` itself
# (docs/mini-finding-2026-12-04: SmolLM2-135M, bf16): training at 16K ran at 87K tokens/s (22% of the
# 989 TFLOP/s spec, counted FLOPs), 3 s of load and save per run; a needle grid's decoding took about
# 70 ms per batched step (60 cells, 10 batches of 50 steps: 27-45 s a model), the loss suite 8 s, the first
# evaluation 60 s more (the base decodes every cell to 50 tokens past its window; the device warms up);
# the GGUF conversion 44 s on the machine's CPU; installing the bundle and starting a process 10 s
# each; a mixture build 5 s; the report 15 s. Every stage's real time lands in stages.jsonl.
NAMED = {
    "h200": {"name": "one H200", "source": "the rates measured by the 2026-12-04 mini run on one H200",
             "train_flop_per_s": 0.22 * 989e12, "prefill_flop_per_s": 165e12, "decode_step_s": 0.07,
             "install_s": 10.0, "process_s": 10.0, "load_s": 1.5, "save_s": 1.5, "convert_s": 44.0,
             "tokenize_s": 0.0, "build_s": 5.0, "loss_s": 8.0, "first_eval_s": 60.0, "report_s": 15.0},
}


def cell_flops(suite, todo: list, config, shares_prefixes: bool) -> list[float]:
    """Forward FLOPs per cell: its prefill (from the cached tokens the backend reuses, when it does)
    and its greedy decoding."""
    spans = suite.prefill_spans(todo) if shares_prefixes else [(0, c.length) for c in todo]
    return span_flops(config, spans, suite.new_tokens)


def span_flops(config, spans, new_tokens: int) -> list[float]:
    """Forward FLOPs per (tokens reused, prompt tokens) span: the prefill past the reused tokens and
    ``new_tokens`` of greedy decoding."""
    return [flops.forward_flops(config, start, end) + (flops.decode_flops(config, end, new_tokens) if new_tokens else 0.0)
            for (start, end) in spans]


def decode_steps(lengths: list[int], new_tokens: int, batched: bool) -> int:
    """Greedy decoding steps for prompts of these lengths: one per new token, for a batch of
    equal-length prompts at a time (at most 64K prompt tokens a batch) when ``batched`` (--fast), for
    one prompt at a time otherwise."""
    steps = 0
    for length, count in Counter(lengths).items():
        batch = max(1, min(count, 65536 // length)) if batched else 1
        steps += -(-count // batch)
    return steps * new_tokens


def named_seconds(cost, config, rates: dict, batched: bool) -> float:
    """One suite's seconds per model on a named device (``rates``: one of :data:`NAMED`), from its
    grid's cost (harness.tasks.base.Cost): its measured whole time, or its prefill at the device's
    rate and its decoding steps."""
    seconds = rates[cost.named_rate] if cost.named_rate else 0.0
    if cost.cells:
        prefill = sum(flops.forward_flops(config, start, end) for start, end in cost.spans)
        steps = decode_steps([c.length for c in cost.cells], cost.new_tokens, batched)
        seconds += prefill / rates["prefill_flop_per_s"] + steps * rates["decode_step_s"]
    return seconds


def machine() -> str:
    """This machine's compute, as a key: the CPU model and core count, or the GPU's name."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}x{torch.cuda.device_count()}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu:{name}x{os.cpu_count()}"


def key(info: dict, backend: str, suite: str) -> str:
    """What a remembered rate is for: machine, backend, dtype, suite and model (a 3M-parameter model
    runs far below a 135M one's FLOP rate)."""
    return (f"{machine()}|{backend}|{info.get('precision', {}).get('dtype', info.get('dtype'))}|{suite}|"
            f"{info.get('name', '?')}|{info.get('parameters', '?')}")


def _memory() -> Path:
    return cache_dir() / "throughput.json"


def remembered(k: str) -> float | None:
    path = _memory()
    try:
        rate = json.loads(path.read_text()).get(k, {}).get("flop_per_s")
    except (OSError, ValueError, AttributeError):
        return None  # no memory yet, or a damaged one: the first-run rule applies
    return float(rate) if isinstance(rate, (int, float)) and rate > 0 else None


def remember(k: str, counted: float, seconds: float) -> None:
    """Fold one finished run's effective rate into the memory (a small JSON, written atomically)."""
    if counted <= 0 or seconds <= 0:
        return
    path = _memory()
    with FileLock(str(path) + ".lock"):
        try:
            memory = json.loads(path.read_text())
            memory = memory if isinstance(memory, dict) else {}
        except (OSError, ValueError):
            memory = {}
        rate = counted / seconds
        old = (memory.get(k) or {}).get("flop_per_s")
        if isinstance(old, (int, float)) and old > 0:
            rate = KEEP * rate + (1 - KEEP) * old
        memory[k] = {"flop_per_s": rate, "runs": int((memory.get(k) or {}).get("runs", 0)) + 1}
        rundir.write_json(path, memory)


def rate(k: str, device: str, dtype: str) -> tuple[float, str]:
    """(FLOP/s, where it comes from) for this key: remembered, or the GEMM peak (``dtype``: bf16,
    fp32, fp16) x FIRST_EFFICIENCY."""
    from harness import precision

    known = remembered(k)
    if known:
        return known, "at the rate measured by earlier runs here"
    peak = flops.measure_peak("cuda" if str(device).startswith("cuda") else "cpu", precision.TORCH_DTYPES[dtype])
    return peak * FIRST_EFFICIENCY, (f"first run here: {FIRST_EFFICIENCY:.0%} of the measured GEMM peak "
                                     f"{peak / 1e12:.2f} TFLOP/s, rough")


def flop_text(n: float) -> str:
    return f"{n / 1e12:,.1f} TFLOP" if n >= 1e11 else f"{n / 1e9:,.1f} GFLOP"


def minutes(seconds: float) -> str:
    if seconds < 60:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
