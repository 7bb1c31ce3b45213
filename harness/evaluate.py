"""Evaluate one model on suites into a run directory: what `harness run` does, and each ablate model.

    EvalRequest (flags) -> prepare() (every flag checked, grids resolved: no model yet)
    -> evaluate(model, prepared, out) (load, suites cell by cell into the store) -> results
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from harness.errors import UserError
from harness.values import format_length, parse_names

log = logging.getLogger("harness")
BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class EvalRequest:
    suites: str = "needle"
    preset: str | None = None
    lengths: str | None = None
    depths: str | None = None
    haystack: str | None = None
    variant: str | None = None         # needle variant: passkey, multikey, multivalue, multiquery, distractor
    scorer: str = "generate"           # needle: generate | loglik | both
    backend: str = "hf"                # hf | vllm
    fast: bool = False                 # hf: split-causal attention + batched decoding (outputs equal to rounding)
    tensor_parallel: int = 1           # vllm: GPUs per model
    chat: bool = False
    max_new_tokens: int | None = None
    loss_bucket: str | None = None
    loss_length: str | None = None     # loss: tokens per document (None: the model's max positions)
    bookqa_file: str | None = None
    regression_tasks: str | None = None
    regression_fewshot: int = 0
    regression_limit: int | None = None
    rope_theta: float | None = None
    rope_scaling: str | None = None
    dtype: str = "auto"                # auto: bf16 where the device computes it natively, else fp32
    device: str | None = None


@dataclass
class Prepared:
    """A request with every model-independent part resolved (grids, haystack, BookQA items)."""

    request: EvalRequest
    suites: list[str]
    rope_scaling: tuple[str, float] | None
    loss_bucket: int | None
    loss_length: int | None
    needle: tuple | None = None        # (config, haystack)
    bookqa: tuple | None = None        # (config, books, items)


def prepare(req: EvalRequest) -> Prepared:
    """Check every flag and resolve the model-independent grids: mistakes fail before a model loads."""
    from harness import models, precision
    from harness.tasks import SUITES
    from harness.values import parse_length

    suites = parse_names(req.suites, list(SUITES), "--suite")
    scaling = models.parse_rope_scaling(req.rope_scaling)
    models.check_rope_theta(req.rope_theta)
    precision.check(req.dtype)
    bucket = parse_length(req.loss_bucket, "--loss-bucket") if req.loss_bucket else None
    loss_length = parse_length(req.loss_length, "--loss-length") if req.loss_length else None
    prep = Prepared(req, suites, scaling, bucket, loss_length)
    if req.variant is not None and "needle" not in suites:
        raise UserError(f"--variant: {req.variant!r} is a needle variant; add needle to --suite")
    if "needle" in suites:
        from harness.tasks import haystack as haystacks
        from harness.tasks import needle

        spec = needle.load_spec()
        hay = haystacks.load(needle.haystack_spec(spec, req.variant, req.haystack))
        cfg = needle.resolve_config(preset=req.preset, lengths=req.lengths, depths=req.depths, chat=req.chat,
                                    haystack=hay, max_new_tokens=req.max_new_tokens, spec=spec, variant=req.variant,
                                    scorer=req.scorer)
        prep.needle = (cfg, hay)
    if "bookqa" in suites:
        from harness.tasks import bookqa

        prep.bookqa = bookqa.resolve_config(preset=req.preset, lengths=req.lengths, bookqa=req.bookqa_file)
    if req.backend not in BACKENDS:
        raise UserError(f"--backend: unknown {req.backend!r}; known: {', '.join(BACKENDS)}")
    if req.backend == "vllm":
        from harness.backends import vllm

        vllm.check_installed()
        if "regression" in suites:
            raise UserError("--backend vllm: the regression suite runs lm-eval on the transformers model; "
                            "run it in a separate `harness run --backend hf`")
    if req.fast and req.backend != "hf":
        raise UserError("--fast: only for --backend hf (vLLM batches and caches prefixes itself)")
    if req.tensor_parallel < 1:
        raise UserError(f"--tensor-parallel: {req.tensor_parallel} must be at least 1")
    if "regression" in suites:
        from harness.tasks import regression

        # Task names are checked here; the 4K cap depends on the model and is set at evaluate().
        regression.resolve_config(tasks=req.regression_tasks, num_fewshot=req.regression_fewshot,
                                  limit=req.regression_limit, max_length=4096)
    return prep


def evaluate(model_spec: str, prep: Prepared, out: Path, console: Console) -> tuple[list[dict], dict]:
    """Run every suite of ``prep`` on ``model_spec`` into the store at ``out``; returns (results, manifest).

    Rerunning the same call resumes: finished cells are skipped.
    """
    from harness import models, provenance
    from harness.backends.hf import HFBackend
    from harness.engine import run_suite
    from harness.store import RunStore, check_writable
    from harness.tasks import bookqa, loss, needle, regression

    req = prep.request
    models.resolve(model_spec)  # a bad path fails before anything slow
    check_writable(out)
    with console.status(f"loading {model_spec}"):
        loaded = models.load(model_spec, rope_theta=req.rope_theta, rope_scaling=prep.rope_scaling,
                             dtype=req.dtype, device=req.device, weights=req.backend == "hf")
    info = loaded.info
    suite_configs, builders = {}, {}
    if prep.needle is not None:
        needle_cfg, hay = prep.needle
        suite_configs["needle"] = needle_cfg.to_dict()
        builders["needle"] = lambda: needle.NeedleSuite(needle_cfg, hay, loaded.tokenizer)
    if prep.bookqa is not None:
        bookqa_cfg, books, items = prep.bookqa
        suite_configs["bookqa"] = bookqa_cfg.to_dict()
        builders["bookqa"] = lambda: bookqa.BookQASuite(bookqa_cfg, books, items, loaded.tokenizer)
    if "regression" in prep.suites:
        # Short-context skill: lm-eval at up to 4K positions (the paper's "4K regression").
        reg_cfg = regression.resolve_config(tasks=req.regression_tasks, num_fewshot=req.regression_fewshot,
                                            limit=req.regression_limit, max_length=min(4096, loaded.max_positions))
        suite_configs["regression"] = reg_cfg.to_dict()
        builders["regression"] = lambda: regression.RegressionSuite(reg_cfg, loaded.tokenizer)
    if "loss" in prep.suites:
        loss_cfg, texts = loss.resolve_config(max_length=loaded.max_positions, bucket=prep.loss_bucket,
                                             length=prep.loss_length)
        suite_configs["loss"] = loss_cfg.to_dict()
        builders["loss"] = lambda: loss.LossSuite(loss_cfg, texts, loaded.tokenizer)
    config = {
        # The embedded model by name (its cache path is the user's), a local one by absolute path.
        "model": {"id": model_spec if model_spec in models.EMBEDDED else str(Path(info["path"]).resolve()),
                  **{k: info[k] for k in ("dtype", "rope_parameters", "max_position_embeddings")}},
        "backend": req.backend + ("-fast" if req.fast and req.backend == "hf" else ""),
        "suites": suite_configs,
    }
    suites = {name: build() for name, build in builders.items()}
    for suite in suites.values():  # grids that cannot be built fail before the run directory is made
        if hasattr(suite, "check"):
            suite.check()
    store = RunStore.open(out, {"config": config, "model": info, **provenance.record()})
    console.print(f"model {info['name']} ({info['parameters'] / 1e6:.1f}M params, {info['dtype']}: "
                  f"{info['precision']['reason']}, "
                  f"{info['attn_implementation']}, {info['device']}); RoPE {info['rope_parameters']}; "
                  f"max positions {info['effective_max_positions']}")
    if prep.needle is not None:
        needle_cfg = prep.needle[0]
        beyond = [n for n in needle_cfg.lengths if n + needle_cfg.max_new_tokens > loaded.max_positions]
        if beyond:
            log.warning("lengths %s (plus up to %d answer tokens) go past the model's %d positions; they run "
                        "anyway: where retrieval breaks is what the grid shows",
                        ", ".join(format_length(n) for n in beyond), needle_cfg.max_new_tokens, loaded.max_positions)
    if req.backend == "vllm":
        from harness.backends.vllm import VLLMBackend

        with console.status("starting vLLM"):
            backend = VLLMBackend(loaded, dtype=info["precision"]["dtype"], tensor_parallel=req.tensor_parallel)
    else:
        backend = HFBackend(loaded, fast=req.fast)
    for name in prep.suites:
        run_suite(suites[name], backend, store, console, loaded.config)
    return list(store.results()), store.read_manifest()
