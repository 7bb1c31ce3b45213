"""Causal attention for prompts that continue a KV cache, with the kernel a fresh prefill uses.

When queries continue a cache (a needle grid's branch after the shared haystack, a chunk of a
long prompt), transformers hands sdpa an explicit [q, past + q] mask. The kernels then compute the
whole masked rectangle and read the mask: on CPU measured about 1.4x the work of the two parts
that matter; on one H200 (2026-12-04) a 32K prompt in 8K chunks ran at 364 TFLOP/s against 531
whole, with a [q, past + q] mask to hold besides (4 GiB for a 32K chunk at 128K).
``prefix_sdpa`` computes the two parts with the kernel a fresh prefill runs: the queries against
the cached keys (no mask) and against themselves (causal, square), merged exactly through their
log-sum-exp. Decoding (one query) and a fresh prefill use sdpa as transformers would.

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
_CHOSEN: dict[tuple, str] = {}   # (device type, dtype, head size) -> the kernel that ran


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
    key_chosen = (query.device.type, query.dtype, query.shape[-1])
    for name in ([_CHOSEN[key_chosen]] if key_chosen in _CHOSEN else KERNELS[query.device.type]):
        try:
            old, old_lse = _attend(name, query, key[:, :, :past], value[:, :, :past], False, scaling)
            new, new_lse = _attend(name, query, key[:, :, past:], value[:, :, past:], True, scaling)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:   # this kernel does not take these shapes or this GPU: the next one
            continue
        _CHOSEN[key_chosen] = name
        return _merge(old, old_lse, new, new_lse).to(query.dtype).transpose(1, 2).contiguous(), None
    _CHOSEN[key_chosen] = "masked"
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=_lower_right(q_len, kv_len, query.device),
                                         scale=scaling)
    return out.transpose(1, 2).contiguous(), None


KERNELS = {"cpu": ["cpu_flash"], "cuda": ["cudnn", "flash", "efficient"]}


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


def _lower_right(q_len: int, kv_len: int, device) -> torch.Tensor:
    """The boolean mask of queries that continue ``kv_len - q_len`` cached keys (True: attend)."""
    rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    return torch.arange(kv_len, device=device)[None, :] <= rows


def chosen() -> dict[str, str]:
    """Which kernel ran for continuing prompts in this process, per (device, dtype, head size)."""
    return {f"{d}/{str(t).removeprefix('torch.')}/{h}": name for (d, t, h), name in _CHOSEN.items()}


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
