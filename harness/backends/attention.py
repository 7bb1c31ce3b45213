"""Causal attention for prompts that continue a KV cache, with the kernel a fresh prefill uses.

When queries continue a cache (a needle grid's branch after the shared haystack, a chunk of a
long prompt), transformers hands sdpa an explicit [q, past + q] mask. The kernels then compute the
whole masked rectangle and read the mask: on CPU measured about 1.4x the work of the two parts
that matter; on one H200 (2026-12-04) a 32K prompt in 8K chunks ran at 364 TFLOP/s against 531
whole, with a [q, past + q] mask to hold besides (4 GiB for a 32K chunk at 128K).
``prefix_sdpa`` computes the two parts with the kernel a fresh prefill runs: the queries against
the cached keys (no mask) and against themselves (causal, square), merged exactly through their
log-sum-exp. A fresh prefill uses sdpa as transformers would; so does decoding (one query), except
on CUDA over a long cache, where the keys are split into pieces run as one batch (flash-decoding,
:func:`split_kv_decode`) so that one prompt's decode step keeps every multiprocessor busy.

Kernels, by device (the first that accepts the shapes, remembered per device, dtype and head size):
CPU: ``_scaled_dot_product_flash_attention_for_cpu``; CUDA: cuDNN's attention (what sdpa picked for
whole prompts on the H200), else the flash kernel, else the memory-efficient one; where none
accepts them, sdpa with the explicit lower-right causal mask (what transformers would have run).

It assumes unpadded rows (every row of a batch at the same position), which is what the HF
backend feeds the model, and full attention in every layer (:func:`applies`). The merge regroups
the arithmetic: results equal sdpa's to rounding, not bit for bit (in bf16 a greedy near-tie can
flip; BENCHMARKS.md counts how often on a needle grid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "harness_prefix_sdpa"
_CHOSEN: dict[tuple, str] = {}   # (use, device type, dtype, head size) -> the kernel that ran


def prefix_sdpa_forward(module, query, key, value, attention_mask=None, dropout=0.0, scaling=None,
                        is_causal=None, **kwargs):
    """query [B, Hq, q, D], key/value [B, Hkv, kv, D] -> ([B, q, Hq, D], None)."""
    q_len, kv_len = query.shape[2], key.shape[2]
    groups = query.shape[1] // key.shape[1]
    if q_len == 1 and query.shape[0] == 1 and kv_len >= SPLIT_KV_MIN.get(query.device.type, kv_len + 1):
        out = split_kv_decode(query, key, value, scaling)
        if out is not None:
            return out.transpose(1, 2).contiguous(), None
    if q_len == 1 or q_len == kv_len:  # decoding sees every key; a fresh prefill is plainly causal
        out = F.scaled_dot_product_attention(query, key, value, is_causal=q_len > 1, scale=scaling,
                                             enable_gqa=groups > 1)
        return out.transpose(1, 2).contiguous(), None
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    past = kv_len - q_len

    def parts(name):
        old, old_lse = _attend(name, query, key[:, :, :past], value[:, :, :past], False, scaling)
        new, new_lse = _attend(name, query, key[:, :, past:], value[:, :, past:], True, scaling)
        return _merge(old, old_lse, new, new_lse)

    out = _first_kernel("continue", query, parts, fallback="masked")
    if out is not None:
        return out.to(query.dtype).transpose(1, 2).contiguous(), None
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=_lower_right(q_len, kv_len, query.device),
                                         scale=scaling)
    return out.transpose(1, 2).contiguous(), None


KERNELS = {"cpu": ["cpu_flash"], "cuda": ["cudnn", "flash", "efficient"]}


# Decoding one prompt over at least this many cached keys splits them (flash-decoding): one query
# per head gives a kernel batch x heads blocks of work, 32 for a 7B model on a GPU with 132 SMs, so
# most of the memory bandwidth idled (92 ms a token at 128K on the H200, floor about 17).
SPLIT_KV_MIN = {"cuda": 8192}
SPLIT_TARGET_BLOCKS = 4   # splits x heads >= this many per streaming multiprocessor


def split_kv_decode(query, key, value, scale, splits: int | None = None) -> torch.Tensor | None:
    """One query per head [1, Hq, 1, D] over [1, Hkv, kv, D] keys, the keys cut into ``splits``
    equal pieces (default: enough for the device's multiprocessors) run as one batched kernel call,
    plus the remainder, merged through their log-sum-exp. None when no kernel takes the shapes."""
    heads, kv_len = query.shape[1], key.shape[2]
    groups = heads // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if splits is None:
        units = torch.cuda.get_device_properties(query.device).multi_processor_count if query.is_cuda else 8
        splits = max(1, min(kv_len // 1024, -(-SPLIT_TARGET_BLOCKS * units // heads)))
    piece = kv_len // splits
    body = splits * piece
    # [1, H, body, D] -> [splits, H, piece, D]: a strided view of the cache, nothing copied.
    keys = key[0, :, :body].unflatten(1, (splits, piece)).transpose(0, 1)
    values = value[0, :, :body].unflatten(1, (splits, piece)).transpose(0, 1)
    queries = query.expand(splits, -1, -1, -1).contiguous()

    def parts(name):
        out, lse = _attend(name, queries, keys, values, False, scale)
        pieces = [(out[i:i + 1], lse[i:i + 1]) for i in range(splits)]
        if body < kv_len:
            pieces.append(_attend(name, query, key[:, :, body:], value[:, :, body:], False, scale))
        return _merge_all(pieces)

    out = _first_kernel("decode", query, parts, fallback="sdpa")
    return None if out is None else out.to(query.dtype)


def _first_kernel(use: str, query, attempt, fallback: str):
    """``attempt(kernel)`` with the first of the device's KERNELS that takes the shapes, the kernel
    remembered per use, device, dtype and head size; None, with ``fallback`` remembered, where none
    does. Out of memory is no refusal of the shapes: it propagates."""
    key = (use, query.device.type, query.dtype, query.shape[-1])
    if _CHOSEN.get(key) == fallback:
        return None
    for name in [_CHOSEN[key]] if key in _CHOSEN else KERNELS[query.device.type]:
        try:
            result = attempt(name)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:   # this kernel does not take these shapes or this GPU: the next one
            continue
        _CHOSEN[key] = name
        return result
    _CHOSEN[key] = fallback
    return None


def _attend(name: str, q, k, v, causal: bool, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """(output [B, H, q, D], log-sum-exp [B, H, q] in fp32) of one kernel; causal is square here."""
    ops = torch.ops.aten
    if name == "cpu_flash":
        out, lse = ops._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)[:2]
    elif name == "cudnn":
        out, lse = ops._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False, scale=scale)[:2]
    elif name == "flash":
        out, lse = ops._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)[:2]
    elif name == "efficient":
        out, lse = ops._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, causal, scale=scale)[:2]
    else:
        raise ValueError(f"unknown attention kernel {name!r}")
    b, h, n = q.shape[:3]
    return out, lse.float().reshape(b, h, -1)[:, :, :n]   # cuDNN's is [B, H, q, 1]; efficient pads q to 32


def _merge(old, old_lse, new, new_lse) -> torch.Tensor:
    """Softmax attention over two disjoint key sets, from each part's output and log-sum-exp (fp32)."""
    top = torch.maximum(old_lse, new_lse)
    w_old = torch.exp(old_lse - top)[..., None]
    w_new = torch.exp(new_lse - top)[..., None]
    return (old.float() * w_old + new.float() * w_new) / (w_old + w_new)


def _merge_all(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """:func:`_merge` over any number of disjoint key sets."""
    lse = torch.stack([p[1] for p in parts])
    weights = torch.exp(lse - lse.max(0).values)[..., None]
    out = sum(p[0].float() * w for p, w in zip(parts, weights))
    return out / weights.sum(0)


def _lower_right(q_len: int, kv_len: int, device) -> torch.Tensor:
    """The boolean mask of queries that continue ``kv_len - q_len`` cached keys (True: attend)."""
    rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    return torch.arange(kv_len, device=device)[None, :] <= rows


def chosen() -> dict[str, str]:
    """Which kernel ran in this process, per use (continue: a prompt continuing a cache; decode: a
    split decode step), device, dtype and head size."""
    return {f"{u}/{d}/{str(t).removeprefix('torch.')}/{h}": name for (u, d, t, h), name in _CHOSEN.items()}


def applies(config) -> bool:
    """Whether the model's every layer is full causal attention (a sliding window needs the mask)."""
    text = config.get_text_config(decoder=True)
    kinds = set(getattr(text, "layer_types", None) or ["full_attention"])
    return kinds == {"full_attention"} and not getattr(text, "sliding_window", None)


def no_mask(*args, **kwargs):
    """The mask builder for ``prefix_sdpa``: none is needed (causality is built in)."""
    return None


def register() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, prefix_sdpa_forward)
    AttentionMaskInterface.register(NAME, no_mask)
    return NAME
