"""Causal attention for prompts that continue a KV cache, at the speed of a fresh prefill on CPU.

When queries continue a cache (a needle grid's branch after the shared haystack, a chunk of a
long prompt), transformers hands sdpa an explicit [q, past + q] mask, and PyTorch's CPU kernels
then compute the whole masked rectangle: measured here about 1.4x the work of the two parts that
matter. ``prefix_sdpa`` computes those parts with the CPU flash kernel: the queries against the
cached keys (no mask) and against themselves (causal), merged exactly through their log-sum-exp.
Decoding (one query) and a fresh prefill use sdpa as transformers would.

It assumes unpadded rows (every row of a batch at the same position), which is what the HF
backend feeds the model; the backend switches it on only around its own calls, in fast mode.
The merge regroups the arithmetic: results equal sdpa's to rounding, not bit for bit (in bf16 a
greedy near-tie can flip; BENCHMARKS.md counts how often on a needle grid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "harness_prefix_sdpa"


def prefix_sdpa_forward(module, query, key, value, attention_mask=None, dropout=0.0, scaling=None,
                        is_causal=None, **kwargs):
    """query [B, Hq, q, D], key/value [B, Hkv, kv, D] -> ([B, q, Hq, D], None)."""
    q_len, kv_len = query.shape[2], key.shape[2]
    groups = query.shape[1] // key.shape[1]
    if q_len == 1 or q_len == kv_len:  # decoding sees every key; a fresh prefill is plainly causal
        out = F.scaled_dot_product_attention(query, key, value, is_causal=q_len > 1, scale=scaling,
                                             enable_gqa=groups > 1)
        return out.transpose(1, 2).contiguous(), None
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    past = kv_len - q_len
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    old, old_lse = flash(query, key[:, :, :past], value[:, :, :past], 0.0, False, scale=scaling)[:2]
    new, new_lse = flash(query, key[:, :, past:], value[:, :, past:], 0.0, True, scale=scaling)[:2]
    top = torch.maximum(old_lse, new_lse)
    w_old = torch.exp(old_lse - top)[..., None]
    w_new = torch.exp(new_lse - top)[..., None]
    out = (old.float() * w_old + new.float() * w_new) / (w_old + w_new)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def no_mask(*args, **kwargs):
    """The mask builder for ``prefix_sdpa``: none is needed (causality is built in)."""
    return None


def register() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, prefix_sdpa_forward)
    AttentionMaskInterface.register(NAME, no_mask)
    return NAME
