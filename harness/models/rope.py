"""Eval-time RoPE overrides: ``--rope-theta`` and ``--rope-scaling`` parsed and applied to a config,
the paper's frozen dynamic NTK registered with transformers, and the positions a RoPE is meant for."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from harness.errors import UserError
from harness.values import check_positive, parse_length

ROPE_SCALING_TYPES = ("linear", "dynamic", "yarn")
FROZEN_DYNAMIC = "frozen_dynamic"   # eval only: dynamic NTK frozen at a length (the paper's reset_rope)
SCALED = "scaled"   # frozen_dynamic:F@L:scaled: max positions = F x trained (the dynamic rule), not L



def parse_rope_scaling(text: str | None) -> tuple | None:
    """``TYPE:FACTOR`` -> (type, factor), TYPE in linear, dynamic, yarn, FACTOR > 1; or
    ``frozen_dynamic:FACTOR@LENGTH`` -> (type, factor, length): dynamic NTK frozen at LENGTH, whose max
    positions (the heatmap's dashed line, the length warnings) are LENGTH, as the reference's heatmap
    draws its line at its PRETRAINED_LEN; ``frozen_dynamic:FACTOR@LENGTH:scaled`` -> (type, factor,
    length, "scaled"): the same RoPE, max positions FACTOR x the trained positions (as for dynamic)."""
    if text is None:
        return None
    kind, _, factor = text.partition(":")
    factor, _, length = factor.partition("@")
    length, _, mark = length.partition(":")
    accepted = (f"TYPE:FACTOR with TYPE one of {', '.join(ROPE_SCALING_TYPES)} and FACTOR > 1, e.g. linear:4, or "
                f"frozen_dynamic:FACTOR@LENGTH[:{SCALED}], e.g. frozen_dynamic:10@81920 (the paper's evaluation)")
    if (kind not in ROPE_SCALING_TYPES + (FROZEN_DYNAMIC,) or not factor or bool(length) != (kind == FROZEN_DYNAMIC)
            or mark not in ("", SCALED)):
        raise UserError(f"--rope-scaling: {text!r} is not valid; accepted: {accepted}")
    try:
        value = float(factor)
        frozen = int(parse_length(length, "--rope-scaling")) if length else None
    except ValueError:
        raise UserError(f"--rope-scaling: factor {factor!r} is not a number; accepted: {accepted}") from None
    if not (value > 1 and math.isfinite(value)):
        raise UserError(f"--rope-scaling: factor {factor!r} must be a finite number > 1; accepted: {accepted}")
    if frozen is None:
        return kind, value
    return (kind, value, frozen, SCALED) if mark else (kind, value, frozen)


def check_rope_theta(value: float | None) -> float | None:
    return check_positive(value, "--rope-theta", "500000 or 5e5")


def apply_rope(config: Any, rope_theta: float | None, rope_scaling: tuple[str, float] | None) -> dict:
    """Override the config's RoPE (transformers 5: ``config.rope_parameters``); return what is in force."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:
        params = {"rope_type": "default", "rope_theta": getattr(config, "rope_theta", 10000.0)}
    if rope_theta is not None:
        params["rope_theta"] = float(rope_theta)
    if rope_scaling is not None:
        kind, factor = rope_scaling[:2]
        params["rope_type"] = kind
        params["factor"] = factor
        # The length the scaling is relative to (yarn and dynamic read it; for linear it records it).
        params.setdefault("original_max_position_embeddings", config.max_position_embeddings)
        if kind == FROZEN_DYNAMIC:
            # transformers' dynamic update grows past config.max_position_embeddings: start it at the
            # frozen length, so the base stays frozen up to there and grows beyond, as the reference's.
            params["frozen_length"] = int(rope_scaling[2])
            if rope_scaling[3:] == (SCALED,):
                params["max_positions"] = SCALED
            config.max_position_embeddings = max(int(config.max_position_embeddings), int(rope_scaling[2]))
    config.rope_parameters = params
    return params


@contextlib.contextmanager
def quiet_rope_validation():
    """transformers warns that it has no validation function for a rope type it does not know."""
    from transformers.utils import logging as hf_logging

    logger = hf_logging.get_logger("transformers.modeling_rope_utils")
    level = logger.level
    logger.setLevel(40)
    try:
        yield
    finally:
        logger.setLevel(level)


def _frozen_dynamic_parameters(config, device=None, seq_len=None, layer_type=None):
    """Dynamic NTK RoPE frozen at a length, as the paper's evaluation sets it (its ``reset_rope(model,
    81920, 10)`` on transformers 4.3x's LlamaDynamicNTKScalingRotaryEmbedding): the base for a
    sequence of ``max(seq_len, frozen_length)`` tokens, relative to the trained positions:
    ``theta * ((factor * n / trained) - (factor - 1)) ** (dim / (dim - 2))`` once n > trained."""
    params = config.rope_parameters
    theta, factor = float(params["rope_theta"]), float(params["factor"])
    trained = int(params["original_max_position_embeddings"])
    dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    n = max(int(seq_len if seq_len is not None else 0), int(params["frozen_length"]))
    base = dynamic_ntk_base(theta, factor, trained, dim, n)
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim))
    return inv_freq, 1.0


def dynamic_ntk_base(theta: float, factor: float, trained: int, dim: int, n: int) -> float:
    """The RoPE base dynamic NTK scaling uses for a sequence of ``n`` positions."""
    return theta * ((factor * n / trained) - (factor - 1)) ** (dim / (dim - 2)) if n > trained else theta


def register_frozen_dynamic() -> None:
    """transformers builds a rotary embedding from ROPE_INIT_FUNCTIONS[rope_type], and re-runs it as
    the sequence grows for every rope type whose name holds "dynamic"."""
    from transformers import modeling_rope_utils

    modeling_rope_utils.ROPE_INIT_FUNCTIONS.setdefault(FROZEN_DYNAMIC, _frozen_dynamic_parameters)


def effective_positions(rope: dict, trained: int) -> int:
    """Positions a model is meant to handle with the RoPE in force: its trained length, or the length
    the scaling is relative to times the factor; a changed theta alone says nothing. Frozen dynamic
    NTK: the length it is frozen at (the reference's ``reset_rope(model, 81920, 10)`` names it the
    model's max train length, and its heatmap's line sits there), unless asked for the factor rule."""
    if rope.get("rope_type") == FROZEN_DYNAMIC and rope.get("max_positions") != SCALED:
        return max(trained, int(rope["frozen_length"]))
    factor = float(rope.get("factor", 1.0)) if rope.get("rope_type", "default") != "default" else 1.0
    return max(trained, int(int(rope.get("original_max_position_embeddings", trained)) * factor))
