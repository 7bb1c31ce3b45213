"""Which floating-point type to compute in, and why: ``--dtype auto`` asks the hardware.

bf16 halves memory and, where the processor has bf16 arithmetic, doubles GEMM throughput. Where it
has none, PyTorch emulates it: on a 2-core AVX2-only VM a 1024^2 bf16 matmul ran at 0.4 GFLOP/s
against 17-35 GFLOP/s in fp32, so one SmolLM2 needle cell went from seconds to minutes. ``auto``
therefore means

    CUDA with bf16 support (Ampere and newer)          -> bf16
    CPU with AVX512-BF16 or AMX-BF16 (/proc/cpuinfo)   -> bf16
    anything else (AVX2-only CPUs, Apple, older GPUs)  -> fp32   (fp16 is never chosen by default)

``HARNESS_DTYPE`` (bf16, fp32 or fp16) replaces what ``auto`` would pick: one switch for a whole test
suite or CI job (``HARNESS_DTYPE=fp32 make test`` measures the suite as an AVX2-only machine runs it).
An explicit ``--dtype bf16`` on a CPU without native bf16 is honoured, with one warning line.
The choice and its reason go into every run's manifest and every training run's config.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.errors import UserError

log = logging.getLogger("harness")

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
ALIASES = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}
ACCEPTED = "auto, bf16, fp32, fp16"
# The CPU flags (Linux /proc/cpuinfo names) that mean bf16 matmuls run in hardware.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Flags worth recording beside a figure: what decides the speed of fp32 and bf16 GEMMs.
CPU_SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
ENV = "HARNESS_DTYPE"


@dataclass(frozen=True)
class Precision:
    """A resolved compute dtype: its short name, what was asked, and why this one."""

    name: str          # bf16 | fp32 | fp16
    requested: str     # what the user or the default asked for (auto, bf16, ...)
    reason: str        # one line: the hardware fact or setting that decided it
    cpu_flags: tuple[str, ...] = ()  # the speed-relevant CPU flags seen (empty on CUDA)

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.name]

    @property
    def long_name(self) -> str:
        return long_name(self.name)

    def record(self) -> dict:
        return {"dtype": self.name, "requested": self.requested, "reason": self.reason,
                "cpu_flags": list(self.cpu_flags)}


def check(value: str, flag: str = "--dtype") -> str:
    """The canonical short name of a dtype request, or one clear error."""
    name = ALIASES.get(str(value).lower(), str(value).lower())
    if name != "auto" and name not in TORCH_DTYPES:
        raise UserError(f"{flag}: {value!r} is not known; accepted: {ACCEPTED}")
    return name


def long_name(name: str) -> str:
    """``bf16`` -> ``bfloat16``: the spelling transformers, vLLM and lm-eval's model_args take."""
    return str(TORCH_DTYPES[check(name)]).removeprefix("torch.")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as Linux names them (empty where /proc/cpuinfo does not exist)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def speed_flags(flags: Iterable[str]) -> tuple[str, ...]:
    have = set(flags)
    return tuple(f for f in CPU_SPEED_FLAGS if f in have)


def native_bf16(device: torch.device, flags: Iterable[str] | None = None,
                cuda_bf16: bool | None = None) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 in hardware, and the fact that says so.

    ``flags`` (CPU) and ``cuda_bf16`` (GPU) replace what this machine reports: tests pass them.
    """
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        return ok, f"CUDA device {'supports' if ok else 'lacks'} bf16"
    if device.type != "cpu":
        return False, f"{device.type}: bf16 speed unknown"
    have = set(cpu_flags() if flags is None else flags)
    found = [f for f in CPU_BF16_FLAGS if f in have]
    if found:
        return True, f"CPU has {found[0]}"
    return False, f"CPU lacks {' and '.join(CPU_BF16_FLAGS)}"


def resolve(requested: str = "auto", device: torch.device | str = "cpu", *, flags: Iterable[str] | None = None,
            cuda_bf16: bool | None = None, env: dict | None = None) -> Precision:
    """Turn a dtype request into the dtype to compute in (see the module docstring for the rule)."""
    device = torch.device(device)
    env = os.environ if env is None else env
    name = check(requested)
    seen = speed_flags(cpu_flags() if flags is None else flags) if device.type == "cpu" else ()
    if name == "auto" and env.get(ENV):
        forced = check(env[ENV], ENV)
        if forced != "auto":
            return Precision(forced, f"auto ({ENV}={env[ENV]})", f"{ENV}={env[ENV]}", seen)
    native, why = native_bf16(device, flags, cuda_bf16)
    if name == "auto":
        return Precision("bf16" if native else "fp32", "auto", f"auto: {why}", seen)
    if name == "bf16" and not native:
        log.warning("--dtype bf16: %s, so bf16 runs emulated and slow (about 40x slower than fp32 on AVX2 "
                    "CPUs); --dtype auto would pick fp32", why)
    return Precision(name, name, "requested", seen)
