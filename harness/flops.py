"""FLOP counts for decoder-only transformers from their config (for cost estimates and MFU).

Dense: 2 x (non-embedding parameters) per token (the LM head included, as it is a matmul).
Attention: per layer, QK^T and AV each cost 2 x heads x head_dim FLOPs per (query, key) pair;
causal attention over a context of n tokens visits n(n+1)/2 pairs.
"""

from __future__ import annotations

from typing import Any


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


def measure_peak(device: str = "cpu", dtype=None, seconds: float = 0.5) -> float:
    """Achievable matmul FLOP/s on this device and dtype (default: what ``auto`` picks there),
    the fastest of square GEMMs timed for ``seconds``. Measure it in the dtype the work runs in: on a CPU without
    native bf16 the bf16 peak is about 1/40 of the fp32 one.

    The GEMM size grows from 256 until one product takes ``probe`` seconds (or reaches 2048 on a
    CPU, 8192 on a GPU), so the whole measurement stays under about ``seconds`` + 8 x ``probe`` on
    any device: a fixed 2048 GEMM in bf16 on an AVX2-only CPU took 40 s a product, minutes in all.
    """
    import time

    import torch

    from harness import precision

    dtype = dtype or precision.resolve("auto", device).torch_dtype

    def timed(a, b) -> float:
        start = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    a = b = None
    for n in gemm_sizes(device):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        if timed(a, b) >= PROBE_SECONDS:
            break
    best, spent = float("inf"), 0.0
    while spent < seconds:  # the fastest product: a peak, and robust to a moment of contention
        t = timed(a, b)
        best, spent = min(best, t), spent + t
    return 2.0 * a.shape[0] ** 3 / best


PROBE_SECONDS = 0.02


def gemm_sizes(device: str) -> list[int]:
    """The GEMM sizes measure_peak tries, smallest first."""
    top = 2048 if device == "cpu" else 8192
    return [n for n in (256, 512, 1024, 2048, 4096, 8192) if n <= top]


def forward_flops(config: Any, start: int, end: int, logits: int = 1) -> float:
    """Forward FLOPs for positions [start, end) with ``start`` tokens already cached, computing
    vocabulary logits at ``logits`` positions only (the exact work of a prefill or a decode)."""
    head = config.hidden_size * config.vocab_size
    return 2.0 * (dense_params(config) - head) * (end - start) + 2.0 * head * logits + attention_flops(config, start, end)
