"""The attention kernel a model runs with (``--attn``), chosen from the device, the installed
packages and whether documents are masked; never chosen silently."""

from __future__ import annotations

import importlib.util

import torch

from harness import flex_cpu
from harness.errors import UserError

ATTENTION = ("auto", "sdpa", "flash_attention_2", "flex_attention", "eager")


def attn_implementation(device: torch.device, requested: str = "auto", doc_mask: bool = False) -> str:
    """The attention kernel transformers runs (``--attn``): never chosen silently, never a dense T x T
    document mask on a GPU.

    auto: FlashAttention-2 on CUDA where flash-attn is installed; on CUDA without it, flex_attention
    when documents are masked (block masks: O((T/128)^2) memory) and sdpa otherwise; sdpa on CPU.
    """
    if requested not in ATTENTION:
        raise UserError(f"--attn: {requested!r} is not known; accepted: {', '.join(ATTENTION)}")
    cuda = device.type == "cuda"
    flash = importlib.util.find_spec("flash_attn") is not None
    if requested == "auto":
        return "flash_attention_2" if cuda and flash else ("flex_attention" if cuda and doc_mask else "sdpa")
    if requested == "flash_attention_2" and not (cuda and flash):
        raise UserError("--attn flash_attention_2: needs CUDA and the flash-attn package "
                        "(pip install 'longctx-harness[flash]'); sdpa and flex_attention need neither")
    if cuda and doc_mask and requested in ("sdpa", "eager"):
        raise UserError(f"--attn {requested} with --doc-mask on CUDA: transformers would build a dense T x T "
                        f"mask per layer (16 GiB at 128K); use flex_attention (block masks) or flash_attention_2")
    if requested == "flex_attention":
        flex_cpu.register()   # on CPU: whole-block lengths (a short sequence is wrong on AVX2 otherwise)
    return requested
