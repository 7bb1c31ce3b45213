"""How many prompt tokens one prefill forward takes: the whole prompt where it fits, else the
largest chunk that does, from the device's free memory and the model's shape.

Why (one H200, 2026-12-04, a random Llama-2-7B shape in bf16): in 8,192-token chunks a 32K prompt
ran at 364 TFLOP/s and a 128K one at 302, against 530 for the model's plain forward; a whole 128K
prompt ran at 533 and peaked at 89 GiB (64 GiB of it KV, 12.6 the weights). A chunk is a full
forward's fixed costs paid again, and (with transformers' masks) a masked kernel over a rectangle.

The memory model is the forward's activations per token in the model's dtype: ``ACT_HIDDEN``
hidden-size vectors (residual, norm, q, k, v, attention output, their fp32 upcasts) and
``ACT_INTER`` intermediate-size ones (gate, up, their product), plus what the attention path adds
(the fp32 merge of :mod:`harness.backends.attention`, or a materialised mask). Sized so the
measured 128K prompt (activations about 12.4 GiB, 101.6 KB per token) is overestimated by about
13%. The KV cache still to be allocated (the preallocated cache allocates at its first write) is
taken off the free memory first, and a fraction ``HEADROOM`` of the rest is used.

On a CPU the chunk stays fixed at ``CPU_CHUNK`` unless a free-memory figure is given: CPU results
stay what they were, and RAM is shared with everything else the machine runs.
"""

from __future__ import annotations

from typing import Callable

import torch

from harness.errors import UserError

CPU_CHUNK = 8192
MIN_CHUNK = 512
HEADROOM = 0.9
ACT_HIDDEN = 6
ACT_INTER = 3


def parse_chunk(text, flag: str = "--prefill-chunk") -> str | int:
    """``auto`` or a whole number of tokens (``8k`` = 8192)."""
    from harness.values import parse_length

    text = str(text).strip().lower()
    if text == "auto":
        return "auto"
    try:
        return parse_length(text, flag)
    except UserError:
        raise UserError(f"{flag}: {text!r} is not auto or a positive number of tokens (e.g. 8k, 32768)") from None


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of keys and values one position holds across the layers."""
    text = config.get_text_config(decoder=True)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return 2 * text.num_hidden_layers * kv * head_dim * torch.finfo(dtype).bits // 8


def activation_bytes(config, dtype: torch.dtype, tokens: int, past: int, attention: str) -> int:
    """Peak activation bytes of one forward of ``tokens`` positions after ``past`` cached ones.
    ``attention``: "prefix" (this backend's continuation kernel), "masked" (sdpa with an explicit
    boolean mask), "eager" (the score matrix itself), or anything else (a fused kernel, no extra)."""
    text = config.get_text_config(decoder=True)
    width = torch.finfo(dtype).bits // 8
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    per_token = width * (ACT_HIDDEN * text.hidden_size + ACT_INTER * text.intermediate_size)
    extra = 0
    if past and tokens > 1:
        if attention == "prefix":   # two fp32 partial outputs and their merge; GQA's keys repeated
            groups = heads // (getattr(text, "num_key_value_heads", None) or heads)
            extra = 3 * 4 * heads * head_dim * tokens + (2 * width * heads * head_dim * (past + tokens) if groups > 1 else 0)
        elif attention == "masked":
            extra = tokens * (past + tokens)
        elif attention == "eager":
            extra = heads * tokens * (past + tokens) * (width + 4)
    elif attention == "eager":
        extra = heads * tokens * tokens * (width + 4)
    return per_token * tokens + extra


def choose(config, dtype: torch.dtype, tokens: int, past: int, free: int, pending: int = 0,
           attention: str = "prefix") -> int:
    """The prefill chunk for ``tokens`` new positions after ``past`` cached ones, with ``free``
    bytes available and ``pending`` of them still to be taken by the KV cache: all of them if one
    forward fits, else the largest multiple of MIN_CHUNK whose last (longest-context) chunk fits,
    never below MIN_CHUNK (running out of memory is then handled as a cell's fault)."""
    budget = HEADROOM * (free - pending)
    if activation_bytes(config, dtype, tokens, past, attention) <= budget:
        return max(tokens, 1)
    lo, hi = 1, max(1, (tokens - 1) // MIN_CHUNK)
    while lo < hi:   # the largest k with k * MIN_CHUNK fitting
        mid = (lo + hi + 1) // 2
        c = mid * MIN_CHUNK
        if activation_bytes(config, dtype, c, past + tokens - c, attention) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo * MIN_CHUNK


def free_bytes(device: torch.device) -> int:
    """Memory a forward can take on a CUDA device now: the driver's free figure plus what torch's
    caching allocator holds without using."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def sizer(device: torch.device, free_memory: Callable[[], int] | None) -> Callable[[], int] | None:
    """What reads the free memory for ``auto`` on this device: the given figure's source, the CUDA
    driver's on a GPU, None on a CPU (the fixed CPU_CHUNK)."""
    if free_memory is not None:
        return free_memory
    if device.type == "cuda":
        return lambda: free_bytes(device)
    return None
