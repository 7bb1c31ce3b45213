"""FLOP counts for decoder-only transformers from their config (for cost estimates and MFU).

Dense: 2 x (non-embedding parameters) per token (the LM head included, as it is a matmul).
Attention: per layer, QK^T and AV each cost 2 x heads x head_dim FLOPs per (query, key) pair;
causal attention over a context of n tokens visits n(n+1)/2 pairs.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable


def dense_params(config: Any) -> int:
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    attn = h * head_dim * (heads + 2 * kv) + heads * head_dim * h
    mlp = 3 * h * inter  # gated MLP (Llama family)
    return layers * (attn + mlp) + h * config.vocab_size


def attention_width(config: Any) -> int:
    heads = config.num_attention_heads
    return config.num_hidden_layers * heads * (getattr(config, "head_dim", None) or config.hidden_size // heads)


def attention_flops(config: Any, start: int, end: int) -> float:
    """Attention FLOPs (QK^T and AV) for positions [start, end), each attending causally to every
    position up to itself (``start`` of them cached)."""
    return 4.0 * attention_width(config) * (end * (end + 1) - start * (start + 1)) / 2


def prefill_flops(config: Any, n: int) -> float:
    """Forward FLOPs to encode n tokens from scratch, causal."""
    return 2.0 * dense_params(config) * n + attention_flops(config, 0, n)


def decode_flops(config: Any, context: int, steps: int) -> float:
    """Forward FLOPs for ``steps`` single-token steps after ``context`` cached tokens."""
    return 2.0 * dense_params(config) * steps + attention_flops(config, context, context + steps)


def train_flops(config: Any, seq_len: int) -> float:
    """FLOPs to train on one sequence: forward + backward (2x forward), no recomputation counted."""
    return 3.0 * prefill_flops(config, seq_len)


def train_flops_docs(config: Any, doc_lens: list[int]) -> float:
    """:func:`train_flops` for a packed row trained with per-document attention: attention is
    counted within each document only (the cross-document blocks a varlen or block-masked kernel
    skips are not work), dense layers over every token."""
    return 3.0 * (2.0 * dense_params(config) * sum(doc_lens) + sum(attention_flops(config, 0, n) for n in doc_lens))


# Dense (no sparsity) tensor-core peaks per GPU from the vendors' data sheets, TFLOP/s, for bf16
# and fp16 (equal on these parts). MFU is conventionally quoted against these.
SPEC_TFLOPS = {
    "H200": 989.4,        # H200 SXM
    "H100 SXM": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.4,        # an H100 whose name says no form factor: the SXM figure
    "A100": 312.0,
    "L40S": 362.0,
}


def spec_peak(device_name: str, dtype) -> float | None:
    """The data-sheet peak FLOP/s for a GPU named ``device_name`` (torch.cuda.get_device_name) in
    bf16/fp16, or None when the part or dtype is not in :data:`SPEC_TFLOPS`."""
    import torch

    if dtype not in (torch.bfloat16, torch.float16):
        return None
    for part, tflops in SPEC_TFLOPS.items():  # most specific first (dict order)
        if all(word in device_name for word in part.split()):
            return tflops * 1e12
    return None


def stated_peak(device, dtype, declared_tflops: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s, what it is) for MFU: a declared figure, else the data sheet's for a known GPU,
    else a GEMM measured here (on a CPU always measured: no data sheet applies to a shared VM)."""
    import torch

    device = torch.device(device)
    if declared_tflops:
        return declared_tflops * 1e12, f"declared {declared_tflops:g} TFLOP/s (--peak-tflops)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        spec = spec_peak(name, dtype)
        if spec:
            return spec, f"spec: {name} dense {str(dtype).removeprefix('torch.')} {spec / 1e12:g} TFLOP/s"
    peak = measure_peak("cpu" if device.type == "cpu" else str(device), dtype)
    return peak, f"measured: fastest square {str(dtype).removeprefix('torch.')} GEMM here, {peak / 1e12:.3g} TFLOP/s"


def measure_peak(device: str = "cpu", dtype=None, seconds: float = 0.5, *,
                 timer: Callable[[int, int], float] | None = None) -> float:
    """Achievable matmul FLOP/s on this device and dtype (default: what ``auto`` picks there): the
    fastest product of the largest square GEMM :func:`gemm_sizes` reaches, timed for ``seconds``.
    Measure it in the dtype the work runs in: on a CPU without native bf16 the bf16 peak is about
    1/40 of the fp32 one.

    ``timer(n, reps)`` returns the wall seconds of ``reps`` products of size n (default:
    :class:`GemmTimer`, real GEMMs, synchronized before and after on CUDA). Each size is warmed up
    once untimed (cuBLAS's initialisation on a GPU's first product took longer than the probe, which
    stopped an H200 at 256 and read 2.1 TFLOP/s), then timed over enough products that one timing
    lasts TIMING_SECONDS (launch and synchronize amortised). The size grows from 256 until one
    product takes PROBE_SECONDS or the device's largest size is reached: an H200 (1.4 ms at 8192)
    reaches 8192; bf16 on an AVX2-only CPU (78 ms at 256, 40 s at 2048) stops at 256. So the
    measurement costs ``seconds`` plus about 3 x TIMING_SECONDS a size, plus two products of the
    last size (each under 8 x PROBE_SECONDS, or one at 256, however slow), plus a one-time init.
    """
    if timer is None:
        from harness import precision

        timer = GemmTimer(device, dtype or precision.resolve("auto", device).torch_dtype)
    for n in gemm_sizes(device):
        best, reps = _probe(timer, n)
        if best >= PROBE_SECONDS:
            break
    spent = 0.0
    while spent < seconds:  # the fastest timing: a peak, and robust to a moment of contention
        t = timer(n, reps)
        best, spent = min(best, t / reps), spent + t
    return 2.0 * n ** 3 / best


PROBE_SECONDS = 0.02    # a product this slow stops the growth: its size is the one measured
TIMING_SECONDS = 0.01   # one timing runs products for at least this long (or MAX_REPS of them)
MAX_REPS = 1024


def _probe(timer: Callable[[int, int], float], n: int) -> tuple[float, int]:
    """(seconds of one product of size n, products a timing needs to last TIMING_SECONDS): one
    product untimed first (initialisation, kernel choice, allocation), then timings of more products
    until one lasts TIMING_SECONDS or counts MAX_REPS."""
    timer(n, 1)
    reps = 1
    while True:
        t = timer(n, reps)
        if t >= TIMING_SECONDS or reps >= MAX_REPS:
            return t / reps, reps
        reps = min(MAX_REPS, max(2 * reps, math.ceil(1.2 * reps * TIMING_SECONDS / max(t, 1e-9))))


class GemmTimer:
    """``timer(n, reps)``: the wall seconds of ``reps`` products of two random n x n matrices in
    ``dtype`` on ``device``, into one output (no allocation timed); on CUDA the device is
    synchronized before the clock starts and before it stops. One size's matrices are held at a time."""

    def __init__(self, device, dtype):
        import torch

        self.device, self.dtype = torch.device(device), dtype
        self._held: tuple | None = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def __call__(self, n: int, reps: int) -> float:
        import torch

        if self._held is None or self._held[0].shape[0] != n:
            self._held = None  # the last size's matrices go before the next ones are made
            self._held = tuple(torch.randn(n, n, device=self.device, dtype=self.dtype) for _ in range(3))
        a, b, out = self._held
        self._sync()
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        self._sync()
        return time.perf_counter() - start


def gemm_sizes(device) -> list[int]:
    """The GEMM sizes measure_peak tries, smallest first: up to 2048 on a CPU, 8192 elsewhere."""
    top = 2048 if str(device).split(":")[0] == "cpu" else 8192
    return [n for n in (256, 512, 1024, 2048, 4096, 8192) if n <= top]


def forward_flops(config: Any, start: int, end: int, logits: int = 1) -> float:
    """Forward FLOPs for positions [start, end) with ``start`` tokens already cached, computing
    vocabulary logits at ``logits`` positions only (the exact work of a prefill or a decode)."""
    head = config.hidden_size * config.vocab_size
    return 2.0 * (dense_params(config) - head) * (end - start) + 2.0 * head * logits + attention_flops(config, start, end)
