"""One declaration per option (harness.config): the command line and the Python API of `run`, `train`
and `ablate` are generated from the same dataclasses, and these tests fail when they drift apart."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import click
import pytest

import harness
from harness import ablate, config
from harness.cli import cli
from harness.errors import UserError
from harness.evaluate import request_flag_types, request_from_flags
from harness.trainer.config import TrainConfig
from harness.values import parse_length

# What only one side has, and why: the command line's run directory, figures' palette, resume and
# plan-only are not settings of the job; the API's model object, quietness and logging step are not flags.
CLI_ONLY = {"run": {"model_spec", "out", "palette", "probe_prompt_mode"}, "train": {"resume"}, "ablate": {"preset", "plan_only", "pilot", "difference", "reference"}}
API_ONLY = {"run": {"model", "out", "verbose", "step"}}


def _params(command: str) -> dict[str, click.Parameter]:
    return {p.name: p for p in cli.commands[command].params if p.name not in ("help",)}


def _api_params() -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(harness.run).parameters)


def test_run_flags_and_api_keywords_are_the_same_options_with_the_same_defaults():
    cli_params, api = _params("run"), _api_params()
    assert set(cli_params) - CLI_ONLY["run"] == set(api) - API_ONLY["run"]
    for name, p in cli_params.items():
        if name not in CLI_ONLY["run"]:
            assert p.default == api[name].default, name
    # Every backend's flags are there, with the backend's own defaults (tensor_parallel was CLI-only once).
    assert {"fast", "attn", "tensor_parallel", "base_url", "max_concurrent"} <= set(api)


def test_the_command_line_and_the_api_build_the_same_request():
    args = ["--model", "m", "--suite", "needle,loss", "--lengths", "1k,2k", "--fast", "--scorer", "both",
            "--loss-bucket", "256", "--max-concurrent", "3", "--rope-theta", "5e5"]
    ctx = cli.commands["run"].make_context("run", args)
    flags = {k: v for k, v in ctx.params.items() if k not in CLI_ONLY["run"]}
    from_cli = request_from_flags(**flags)
    from_api = request_from_flags(suites="needle,loss", lengths="1k,2k", fast=True, scorer="both",
                                  loss_bucket="256", max_concurrent=3, rope_theta=5e5)
    assert from_cli == from_api
    assert from_api.for_backend("hf").fast and from_api.options_for("needle").scorer == "both"
    assert from_api.for_backend("openai").max_concurrent == 3


def test_an_unknown_keyword_is_a_type_error_naming_the_accepted_ones():
    with pytest.raises(TypeError, match="unexpected keyword argument 'lenghts'.*lengths"):
        request_from_flags(lenghts="1k")
    with pytest.raises(TypeError, match="from_preset.*'token'"):
        ablate.from_preset("tiny", token="5M")


def test_a_backend_flag_with_another_backend_is_refused_by_its_own_declaration():
    from harness.evaluate import prepare

    with pytest.raises(UserError, match=r"^--tensor-parallel: only for --backend vllm .*not --backend hf$"):
        prepare(request_from_flags(tensor_parallel=2))
    with pytest.raises(UserError, match=r"^--fast: only for --backend hf"):
        prepare(request_from_flags(backend="openai", base_url="http://x", fast=True))


def test_train_flags_are_train_config_fields():
    cli_params = _params("train")
    declared = {s.name: s for s in config.settings(TrainConfig)}
    flagged = {n for n, s in declared.items() if s.flag}
    assert set(cli_params) - CLI_ONLY["train"] == flagged
    assert set(declared) - flagged == {"weight_decay", "clip", "loss_chunk"}   # Python callers only
    for name in flagged:
        s = declared[name]
        if s.required and s.cli_default is config.SAME:
            assert cli_params[name].required, name
        else:
            assert cli_params[name].default == (s.default if s.cli_default is config.SAME else s.cli_default), name


def test_train_argv_rebuilds_the_same_config_through_the_command_line():
    cfg = TrainConfig(base="b", data="d", seq_len=1024, tokens=50_000, out="o", rope_theta=5e5,
                      rope_scaling=("linear", 2.0), lr=3e-5, grad_ckpt=False, doc_mask=True, warmup_steps=0)
    ctx = cli.commands["train"].make_context("train", cfg.argv())
    again = TrainConfig.from_flags(**{k: v for k, v in ctx.params.items() if k != "resume"})
    assert again == cfg


def test_train_from_scratch_defaults_live_with_the_config():
    cfg = TrainConfig.from_flags(from_scratch="tiny", out="o")
    assert (cfg.seq_len, cfg.tokens, cfg.lr, cfg.batch_tokens, cfg.data) == (512, 300_000, 1e-3, 8 * 512, "")
    with pytest.raises(UserError, match="exactly one of --base"):
        TrainConfig.from_flags(base="b", from_scratch="tiny", out="o")
    with pytest.raises(UserError, match="--seq-len and --tokens are required"):
        TrainConfig.from_flags(base="b", data="d", out="o")


def test_ablate_flags_are_from_preset_keywords_and_every_preset_key_is_declared():
    declared = {s.name: s for s in config.settings(ablate.AblateFlags)}
    assert set(_params("ablate")) - CLI_ONLY["ablate"] == {n for n, s in declared.items() if s.flag}
    for name, preset in ablate.PRESETS.items():
        assert set(preset) <= set(declared), (name, set(preset) - set(declared))
    cfg = ablate.from_preset("tiny", tokens="20k", seq_len="512", seeds=2)
    assert (cfg.tokens, cfg.seq_len, cfg.seeds, cfg.out) == (20_000, 512, 2, "runs/ablate-tiny")


@dataclass(frozen=True, kw_only=True)
class _Toy:
    n: int = config.setting(3, "How many.")
    length: int = config.setting(help="A length.", parse=parse_length)
    loud: bool = config.setting(True, "Loudness.", negatable=True)
    hidden: float = config.setting(0.5, "API only.", flag=None)


def test_a_declaration_makes_its_flags_parser_and_signature():
    @click.command()
    @config.click_options(_Toy)
    def toy(**flags):
        return flags

    ctx = toy.make_context("toy", ["--length", "2k", "--no-loud"])
    assert ctx.params == {"n": 3, "length": 2048, "loud": False}
    with pytest.raises(click.MissingParameter):
        toy.make_context("toy", [])
    with pytest.raises(UserError, match="--length"):
        toy.make_context("toy", ["--length", "two"])
    sig = config.signature(_Toy)
    assert list(sig.parameters) == ["n", "length", "loud", "hidden"]
    assert sig.parameters["hidden"].default == 0.5
