"""`--dtype auto`: bf16 only where the hardware computes it natively, recorded with its reason."""

import json
import logging

import pytest
import torch
from rich.console import Console

from harness import models, precision
from harness.errors import UserError

AVX2_ONLY = {"fpu", "sse4_2", "avx", "avx2", "fma", "f16c"}
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_bf16"}
SAPPHIRE_RAPIDS = AVX2_ONLY | {"avx512f", "amx_tile", "amx_bf16"}


@pytest.mark.parametrize("flags, expected", [(AVX2_ONLY, "fp32"), (AVX512_BF16, "bf16"),
                                             (SAPPHIRE_RAPIDS, "bf16"), (set(), "fp32")])
def test_auto_follows_the_cpu_flags(flags, expected):
    chosen = precision.resolve("auto", "cpu", flags=flags, env={})
    assert chosen.name == expected and chosen.requested == "auto"
    assert chosen.torch_dtype == {"bf16": torch.bfloat16, "fp32": torch.float32}[expected]
    assert ("lacks" in chosen.reason) == (expected == "fp32")
    assert set(chosen.cpu_flags) <= set(flags) and "fpu" not in chosen.cpu_flags


@pytest.mark.parametrize("supported, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_never_picks_fp16(supported, expected):
    chosen = precision.resolve("auto", "cuda", cuda_bf16=supported, env={})
    assert chosen.name == expected and chosen.cpu_flags == ()


def test_environment_replaces_what_auto_picks_but_not_an_explicit_request():
    assert precision.resolve("auto", "cpu", flags=AVX512_BF16, env={"HARNESS_DTYPE": "fp32"}).name == "fp32"
    assert precision.resolve("auto", "cpu", flags=AVX2_ONLY, env={"HARNESS_DTYPE": "auto"}).name == "fp32"
    assert precision.resolve("fp16", "cpu", flags=AVX2_ONLY, env={"HARNESS_DTYPE": "fp32"}).name == "fp16"
    with pytest.raises(UserError, match="HARNESS_DTYPE: 'int8' is not known; accepted: auto, bf16"):
        precision.resolve("auto", "cpu", flags=AVX2_ONLY, env={"HARNESS_DTYPE": "int8"})


def test_explicit_bf16_without_native_support_warns_once_and_is_honoured(caplog):
    with caplog.at_level(logging.WARNING, logger="harness"):
        chosen = precision.resolve("bfloat16", "cpu", flags=AVX2_ONLY, env={})
    assert chosen.name == "bf16" and chosen.reason == "requested"
    assert len(caplog.records) == 1 and "slow" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="harness"):
        precision.resolve("bf16", "cpu", flags=AVX512_BF16, env={})
    assert not caplog.records


def test_long_names_are_what_the_libraries_take():
    assert [precision.long_name(n) for n in ("bf16", "fp32", "fp16", "bfloat16")] == \
        ["bfloat16", "float32", "float16", "bfloat16"]
    assert precision.resolve("fp32", "cpu", flags=AVX2_ONLY, env={}).long_name == "float32"


def test_bad_dtype_is_one_clear_error():
    with pytest.raises(UserError, match=r"--dtype: 'bf8' is not known; accepted: auto, bf16, fp32, fp16"):
        precision.check("bf8")


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert precision.cpu_flags(info) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert precision.cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize("flags, expected", [(AVX2_ONLY, "float32"), (AVX512_BF16, "bfloat16")])
def test_manifest_records_the_choice_and_why(flags, expected, tiny_model_dir, tmp_path, monkeypatch):
    """The whole path: the flags the machine reports -> the loaded weights -> the run's manifest."""
    from harness import tasks
    from harness.evaluate import EvalRequest, evaluate, prepare

    monkeypatch.setattr(precision, "cpu_flags", lambda *a: frozenset(flags))
    monkeypatch.delenv("HARNESS_DTYPE", raising=False)
    loaded = models.load(str(tiny_model_dir))
    assert next(loaded.model.parameters()).dtype == getattr(torch, expected)
    prep = prepare(EvalRequest(suites="needle", lengths="256", depths="50",
                               options={"needle": tasks.options("needle", max_new_tokens=4)}))
    evaluate(str(tiny_model_dir), prep, tmp_path / "run", Console(quiet=True))
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["config"]["model"]["dtype"] == expected
    record = manifest["model"]["precision"]
    assert record["requested"] == "auto" and record["reason"].startswith("auto: CPU ")
    assert record["dtype"] == {"float32": "fp32", "bfloat16": "bf16"}[expected]
    assert "avx2" in record["cpu_flags"]


class FakeGemm:
    """A simulated device for measure_peak's ``timer``: the wall seconds of ``reps`` products of two
    n x n matrices are a one-time initialisation on the first call (cuBLAS's handle, kernel
    selection), a fixed cost per timing (launch and synchronize), and the products at ``rate`` FLOP/s.
    ``elapsed`` sums what every call cost."""

    def __init__(self, rate: float, init: float = 0.0, overhead: float = 0.0):
        self.rate, self.init, self.overhead = rate, init, overhead
        self.calls: list[tuple[int, int]] = []
        self.elapsed = 0.0

    def __call__(self, n: int, reps: int) -> float:
        t = (0.0 if self.calls else self.init) + self.overhead + reps * 2.0 * n ** 3 / self.rate
        self.calls.append((n, reps))
        self.elapsed += t
        return t

    @property
    def sizes(self) -> set[int]:
        return {n for n, _ in self.calls}


def test_the_peak_on_a_gpu_amortises_init_and_launches():
    """The H200 of 2026-12-04 (bf16 GEMM ~790 TFLOP/s) read 2.1 TFLOP/s: its first product (cuBLAS
    initialisation) outlasted the probe, so the size stayed 256, where one product per timing is
    mostly launch and synchronize. Warmed up, several products a timing, it reaches 8192."""
    from harness import flops

    gpu = FakeGemm(rate=790e12, init=0.5, overhead=20e-6)
    peak = flops.measure_peak("cuda", torch.bfloat16, seconds=0.5, timer=gpu)
    assert abs(peak / 790e12 - 1) < 0.10, peak / 1e12
    assert max(gpu.sizes) == 8192 and gpu.sizes == set(flops.gemm_sizes("cuda"))
    assert max(reps for n, reps in gpu.calls if n == 8192) > 1   # launch and sync amortised
    assert gpu.elapsed < 0.5 + 0.5 + 1.0                           # seconds + init + the probes


def test_the_peak_on_a_slow_cpu_stops_early_and_stays_bounded():
    """bf16 on an AVX2-only CPU: 40 s a 2048 product (78 ms at 256). Every size is slow, so the
    probe stops at the first, and the whole measurement costs about ``seconds`` and a few products."""
    from harness import flops

    cpu = FakeGemm(rate=2.0 * 2048 ** 3 / 40.0)
    one = 2.0 * 256 ** 3 / cpu.rate
    peak = flops.measure_peak("cpu", torch.bfloat16, seconds=0.5, timer=cpu)
    assert cpu.sizes == {256}
    assert cpu.elapsed < 0.5 + 3 * one
    assert abs(peak / cpu.rate - 1) < 1e-9


@pytest.mark.parametrize("rate, stop", [(1e12, 2048), (100e9, 1024), (1e9, 256)])
def test_the_peak_stops_growing_at_the_first_slow_gemm(rate, stop):
    """The GEMM grows until one product takes PROBE_SECONDS, and on a CPU no further than 2048."""
    from harness import flops

    cpu = FakeGemm(rate=rate, overhead=1e-6)
    peak = flops.measure_peak("cpu", torch.float32, seconds=0.2, timer=cpu)
    assert max(cpu.sizes) == stop and cpu.sizes == {n for n in flops.gemm_sizes("cpu") if n <= stop}
    assert abs(peak / rate - 1) < 0.10
    assert cpu.elapsed < 0.2 + 0.5


def test_the_peak_of_this_cpu_is_measured():
    """The default timer runs real GEMMs here (fp32: every CPU computes it natively)."""
    from harness import flops

    assert flops.measure_peak("cpu", torch.float32, seconds=0.01) > 1e8
