"""Parsing of CLI values, shared by every command (DESIGN.md conventions).

- lists are comma-separated: ``1k,2k,4k``;
- ranges are ``min:max:n`` (n evenly spaced values, ends included, rounded);
- token lengths take ``k`` = 1024 (``32k`` = 32768 tokens);
- token budgets take ``k``/``M``/``B`` = 10^3/10^6/10^9 (``50M`` = 50,000,000 tokens).
Every parser raises :class:`UserError` naming the bad value and what is accepted.
"""

from __future__ import annotations

import math
import re

import numpy as np

from harness.errors import UserError

_NUM = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbB]?)\s*$")
_LENGTH_UNITS = {"": 1, "k": 1024, "m": 1024**2}
_BUDGET_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9}
# Bounds checked before anything is allocated: a context length up to 16M tokens (128x the paper's
# 128K), a budget up to 10^13 tokens (past any continual-pretraining run), a range of at most 10,000
# values, a seed numpy and torch both take.
MAX_LENGTH = 16 * 1024**2
MAX_BUDGET = 10**13
MAX_RANGE = 10_000
MAX_SEED = 2**32 - 1
MIN_SEQ_LEN = 16        # a training sequence shorter than this is a mistake (the paper trains at 80K)


def _number(text: str, units: dict[str, int], what: str, accepted: str, limit: float) -> float:
    m = _NUM.match(text)
    if not m or m.group(2).lower() not in units:
        raise UserError(f"{what}: {text!r} is not a number; accepted: {accepted}")
    value = float(m.group(1)) * units[m.group(2).lower()]
    if not value <= limit:  # also inf (1e400)
        raise UserError(f"{what}: {text!r} is too large (at most {limit:,.0f}); accepted: {accepted}")
    return value


def parse_length(text: str, what: str = "length") -> int:
    """A context length in tokens: ``4096``, ``4k`` (=4096), ``1.5k`` (=1536)."""
    value = _number(text, _LENGTH_UNITS, what, "a positive token count such as 4096, 4k or 128k", MAX_LENGTH)
    if value < 1 or value != int(value):
        raise UserError(f"{what}: {text!r} must be a positive whole number of tokens (e.g. 4096, 4k)")
    return int(value)


def parse_budget(text: str, what: str = "tokens") -> int:
    """A token budget: ``50M`` = 50,000,000, ``2B`` = 2,000,000,000, ``500k`` = 500,000."""
    value = _number(text, _BUDGET_UNITS, what, "a positive count such as 500k, 50M or 2B", MAX_BUDGET)
    if value < 1:
        raise UserError(f"{what}: {text!r} must be positive (e.g. 500k, 50M, 2B)")
    return int(round(value))


def _split(text: str, what: str) -> list[str]:
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p for p in parts):
        raise UserError(f"{what}: {text!r} has an empty item; give a comma-separated list or min:max:n")
    return parts


def _range(text: str, parse, what: str) -> list[float]:
    bits = text.split(":")
    if len(bits) != 3:
        raise UserError(f"{what}: {text!r} is not a range; accepted: min:max:n, e.g. 1k:128k:40")
    lo, hi = parse(bits[0]), parse(bits[1])
    try:
        n = int(bits[2])
    except ValueError:
        raise UserError(f"{what}: range count {bits[2]!r} is not a whole number (min:max:n)") from None
    if n < 1 or hi < lo:
        raise UserError(f"{what}: range {text!r} needs n >= 1 and max >= min")
    if n > MAX_RANGE:
        raise UserError(f"{what}: range {text!r} asks for {n:,} values; at most {MAX_RANGE:,}")
    return list(np.linspace(lo, hi, n)) if n > 1 else [lo]


def parse_lengths(text: str) -> list[int]:
    """``1k,2k,4k`` or ``1k:128k:40`` -> sorted unique token lengths."""
    what = "--lengths"
    if ":" in text:
        values = [int(round(v)) for v in _range(text.strip(), lambda t: parse_length(t, what), what)]
    else:
        values = [parse_length(p, what) for p in _split(text, what)]
    return sorted(set(values))


def _parse_depth(text: str, what: str) -> float:
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise UserError(f"{what}: {text!r} is not a number; accepted: percents 0-100, e.g. 0,50,100 or 0:100:11") from None
    if not 0 <= value <= 100:
        raise UserError(f"{what}: {text!r} is outside 0-100 (depth is a percent of the haystack)")
    return value


def parse_depths(text: str) -> list[float]:
    """``0,50,100`` or ``0:100:11`` -> sorted unique depth percents in [0, 100]."""
    what = "--depths"
    if ":" in text:
        values = [round(v, 2) for v in _range(text.strip(), lambda t: _parse_depth(t, what), what)]
    else:
        values = [_parse_depth(p, what) for p in _split(text, what)]
    return sorted(set(values))


def check_seed(value: int, what: str = "--seed") -> int:
    """A seed numpy and torch both accept: 0 to 2^32 - 1."""
    if not 0 <= value <= MAX_SEED:
        raise UserError(f"{what}: {value} is not accepted; give an integer from 0 to 2^32 - 1")
    return value


def check_fraction(value: float, what: str) -> float:
    if not 0 <= value <= 1:  # also nan
        raise UserError(f"{what}: {value!r} is not accepted; give a fraction from 0 to 1, e.g. 0.01")
    return value


def check_positive(value: float | None, what: str, example: str) -> float | None:
    """A finite number above 0 (None: not given)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UserError(f"{what}: {value!r} is not accepted; give a finite number above 0, e.g. {example}")
    return value


def parse_names(text: str, known: list[str], what: str) -> list[str]:
    """A comma-separated list of names, each one of ``known``."""
    names = _split(text, what)
    for name in names:
        if name not in known:
            raise UserError(f"{what}: unknown {name!r}; known: {', '.join(known)}")
    return list(dict.fromkeys(names))


def format_length(n: int) -> str:
    """4096 -> '4K', 1536 -> '1.5K', 1000 -> '1000' (axis labels)."""
    if n % 1024 == 0:
        return f"{n // 1024}K"
    if n >= 1024 and (n * 10) % 1024 == 0:
        return f"{n / 1024:.1f}K"
    return str(n)


def format_rope(rope: dict | None) -> str:
    """"RoPE default θ=100000", "RoPE dynamic θ=500000 ×10 from 81920": a RoPE config for people."""
    if not rope:
        return "RoPE ?"
    text = f"RoPE {rope.get('rope_type', 'default')} θ={rope.get('rope_theta', 0):g}"
    if rope.get("factor"):
        text += f" ×{rope['factor']:g}"
    if rope.get("original_max_position_embeddings") and rope.get("rope_type", "default") != "default":
        text += f" from {rope['original_max_position_embeddings']}"
    return text


def slug(text: str) -> str:
    """``text`` as one safe file-name component (run directories, per-run figure folders)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"
