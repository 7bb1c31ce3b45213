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


def test_the_peak_measurement_stops_growing_at_the_first_slow_gemm(monkeypatch):
    """measure_peak sizes its GEMM to the device: once a product takes PROBE_SECONDS it stops
    growing, so a CPU with slow bf16 (40 s per 2048 product on AVX2) is measured in about a second."""
    import torch

    from harness import flops

    sizes = []
    real = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *shape, **kw: sizes.append(shape[0]) or real(*shape, **kw))
    monkeypatch.setattr(flops, "PROBE_SECONDS", 0.0)  # every product counts as slow
    assert flops.measure_peak("cpu", torch.float32, seconds=0.01) > 0
    assert set(sizes) == {256}
    sizes.clear()
    monkeypatch.setattr(flops, "PROBE_SECONDS", float("inf"))  # none does: up to the CPU's largest size
    flops.measure_peak("cpu", torch.float32, seconds=0.01)
    assert sorted(set(sizes)) == flops.gemm_sizes("cpu") == [256, 512, 1024, 2048]
