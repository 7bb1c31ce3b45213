"""flex_attention on CPU at whole-block lengths, so it gives sdpa's logits on every CPU.

The cause (torch 2.11-2.13, seen 2026-12-04): inductor's C++ flex_attention kernel clamps its key
block to the sequence when the sequence is shorter than one block (128), and with AVX2 vectors
(8 floats) a key block of 8, 24, 40, 56, 72 or 120 keys (an odd multiple of 8) reads past what it
wrote: the logits come out wrong or NaN, differently from one compile to the next. With AVX512
(16 floats) every length checked is exact, and lengths of a block or more are exact on both
(measured: bench/flex_cpu_lengths.py; ``ATEN_CPU_CAPABILITY=avx2`` reproduces it on an AVX512 machine,
given a fresh TORCHINDUCTOR_CACHE_DIR: inductor's cache does not key on that variable).

So on CPU transformers' ``flex_attention`` is replaced by this wrapper: queries and keys are padded
with zeros to the next multiple of the block, the block mask is rebuilt at that length (a padded key
is never attended; a padded query attends key 0 only, so no row is empty), and the padding is cut from
the output. Causal attention means the real rows are unchanged. Rows that are already whole blocks
go straight through. CUDA is not touched: its Triton kernel masks a partial block itself (the GPU check
compares it with sdpa at such lengths).
"""

from __future__ import annotations

import torch

BLOCK = 128          # torch's _DEFAULT_SPARSE_BLOCK_SIZE: what transformers' block masks use
_registered = False
_last: tuple = (None, None)   # (the transformers mask, its padded twin)


def _round_up(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def padded_mask(mask, q_len: int, kv_len: int):
    """``mask`` (a BlockMask for q_len x kv_len) at whole-block lengths: the same where both indices
    are real, never a padded key for a real query, and key 0 for a padded query."""
    from torch.nn.attention.flex_attention import create_block_mask

    inner = mask.mask_mod
    pq, pk = _round_up(q_len), _round_up(kv_len)
    device = mask.kv_num_blocks.device
    # The lengths as tensors, not ints: a compiled flex kernel turns a captured int into a symbol once a
    # second length is seen, and inductor's C++ template then fails to compile (torch 2.13).
    nq, nk = torch.tensor(q_len, device=device), torch.tensor(kv_len, device=device)

    def mask_mod(b, h, q, kv):
        real = (q < nq) & (kv < nk)
        inside = inner(b, h, torch.where(q < nq, q, 0), torch.where(kv < nk, kv, 0))
        return (real & inside) | ((q >= nq) & (kv == 0))

    batch, heads = mask.kv_num_blocks.shape[:2]
    return create_block_mask(mask_mod, batch, heads, pq, pk, device=device, BLOCK_SIZE=BLOCK)


def _forward(module, query, key, value, attention_mask, **kwargs):
    from torch.nn.attention.flex_attention import BlockMask
    from transformers.integrations.flex_attention import flex_attention_forward

    if query.device.type != "cpu" or not isinstance(attention_mask, BlockMask):
        return flex_attention_forward(module, query, key, value, attention_mask, **kwargs)
    # Static shapes only: once a second length is seen dynamo would compile the kernel for symbolic
    # lengths, and inductor's C++ template then references variables it never declares (torch 2.13).
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        return _padded(module, query, key, value, attention_mask, **kwargs)


def _padded(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.flex_attention import flex_attention_forward

    q_len, kv_len = query.shape[-2], key.shape[-2]
    if q_len % BLOCK == 0 and kv_len % BLOCK == 0:
        return flex_attention_forward(module, query, key, value, attention_mask, **kwargs)
    global _last
    if _last[0] is not attention_mask:   # one mask per forward, shared by every layer: build its twin once
        _last = (attention_mask, padded_mask(attention_mask, q_len, kv_len))
    pad = lambda t, n: torch.nn.functional.pad(t, (0, 0, 0, n - t.shape[-2]))   # noqa: E731
    pq, pk = _round_up(q_len), _round_up(kv_len)
    out, weights = flex_attention_forward(module, pad(query, pq), pad(key, pk), pad(value, pk), _last[1], **kwargs)
    return out[:, :q_len], weights   # transformers returns (batch, q_len, heads, head_dim)


def register() -> None:
    """Route transformers' ``flex_attention`` through the padding wrapper (idempotent)."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register("flex_attention", _forward)
        _registered = True
