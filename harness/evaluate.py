"""Evaluate one model on suites into a run directory: what `harness run` does, and each ablate model.

    EvalRequest (flags) -> prepare() (every flag checked, grids resolved: no model yet)
    -> evaluate(model, prepared, out) (load, suites cell by cell into the store) -> results
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from harness import shapes, tracking
from harness.errors import UserError
from harness.tasks.base import option_flags
from harness.values import check_seed, format_rope, parse_names

log = logging.getLogger("harness")
BACKENDS = ("hf", "vllm", "openai")
BEYOND_POSITIONS = 32   # the paper's own stretch: a 4K LLaMA-2 evaluated at 128K


@dataclass(frozen=True)
class EvalRequest:
    suites: str = "needle"
    preset: str | None = None
    lengths: str | None = None
    depths: str | None = None
    seed: int = 0                      # BookQA's offline items, needle variants' keys and values
    options: dict = field(default_factory=dict)   # suite name -> its Options (missing: defaults)
    backend: str = "hf"                # hf | vllm | openai
    fast: bool = False                 # hf: split-causal attention + batched decoding (outputs equal to rounding)
    tensor_parallel: int = 1           # vllm: GPUs per model
    rope_theta: float | None = None
    rope_scaling: str | None = None
    dtype: str = "auto"                # auto: bf16 where the device computes it natively, else fp32
    device: str | None = None
    base_url: str | None = None        # openai: the server's root URL
    tokenizer: str | None = None       # openai: the served model's tokenizer (default: the model name)
    max_concurrent: int = 8            # openai: requests in flight
    wandb: str | None = None           # a W&B project to log the summary to (TensorBoard is always written)
    step: int = 0                      # the step the summary is logged at (a training loop's)
    attn: str = "auto"                 # hf: the attention kernel (models.attn_implementation)

    def options_for(self, name: str):
        from harness import tasks

        return self.options.get(name) or tasks.options(name)


@dataclass
class Prepared:
    """A request with every model-independent part resolved (grids, haystack, BookQA items, task names)."""

    request: EvalRequest
    suites: dict[str, object]          # suite name -> what its prepare() resolved, in --suite order
    rope_scaling: tuple[str, float] | None

    def of(self, name: str):
        return self.suites.get(name)


def prepare(req: EvalRequest) -> Prepared:
    """Check every flag and resolve the model-independent grids: mistakes fail before a model loads."""
    from harness import models, precision, tasks
    from harness.tasks.base import Grid

    names = parse_names(req.suites, list(tasks.SUITES), "--suite")
    scaling = models.parse_rope_scaling(req.rope_scaling)
    models.check_rope_theta(req.rope_theta)
    device = models.parse_device(req.device)
    if req.attn != "auto" and req.backend != "hf":
        raise UserError(f"--attn: only for --backend hf (--backend {req.backend} runs its own kernels)")
    models.attn_implementation(device, req.attn)
    check_seed(req.seed)
    precision.check(req.dtype)
    if req.backend not in BACKENDS:
        raise UserError(f"--backend: unknown {req.backend!r}; known: {', '.join(BACKENDS)}")
    if req.fast and req.backend != "hf":
        raise UserError("--fast: only for --backend hf (vLLM batches and caches prefixes itself)")
    if req.tensor_parallel < 1:
        raise UserError(f"--tensor-parallel: {req.tensor_parallel} must be at least 1")
    _check_served(req)
    tracking.check_wandb(req.wandb)
    for name, opts in req.options.items():  # a suite's flag given without the suite
        given = [f for f in option_flags(type(opts)) if getattr(opts, f.field) != f.default]
        if name not in names and given:
            raise UserError(f"{given[0].flag}: {getattr(opts, given[0].field)!r} is a {name} option; "
                            f"add {name} to --suite")
    if req.backend == "vllm":
        from harness.backends import vllm

        vllm.check_installed()
    grid = Grid(req.preset, req.lengths, req.depths, req.seed)
    resolved = {}
    for name in names:
        suite = tasks.get(name)
        if req.backend not in suite.backends:
            raise UserError(f"--backend {req.backend}: the {name} suite runs on --backend "
                            f"{' or '.join(suite.backends)} only; run it in a separate `harness run`")
        resolved[name] = suite.prepare(grid, req.options_for(name))
    return Prepared(req, resolved, scaling)


def quiet_libraries() -> None:
    """transformers' and datasets' warnings and loading bars off: the harness reports progress itself
    (a one-line error stays one line)."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        import datasets  # not in the CPU vLLM venv
    except ImportError:
        return
    datasets.disable_progress_bars()


def _check_served(req: EvalRequest) -> None:
    """The flags of ``--backend openai``, and the ones that do not apply to it."""
    if req.backend != "openai":
        if req.base_url is not None:
            raise UserError(f"--base-url: only for --backend openai (a served model), not --backend {req.backend}")
        return
    if not req.base_url:
        raise UserError("--backend openai: give --base-url, the server's root (e.g. http://localhost:8000 "
                        "for `vllm serve`)")
    if not req.base_url.startswith(("http://", "https://")):
        raise UserError(f"--base-url: {req.base_url!r} is not an http:// or https:// URL")
    if not 1 <= req.max_concurrent <= 1024:
        raise UserError(f"--max-concurrent: {req.max_concurrent} is outside 1..1024")
    for flag, given in (("--rope-theta", req.rope_theta is not None), ("--rope-scaling", req.rope_scaling is not None),
                        ("--dtype", req.dtype != "auto"), ("--device", req.device is not None)):
        if given:
            raise UserError(f"{flag}: a served model's {flag[2:]} is the server's; set it where the server "
                            f"starts (e.g. vllm serve --hf-overrides / --dtype)")


def evaluate(model_spec, prep: Prepared, out: Path, console: Console) -> tuple[list[dict], dict]:
    """Run every suite of ``prep`` on ``model_spec`` into the store at ``out``; returns (results, manifest).

    ``model_spec``: a model source (a directory, a hub id, ``smollm2-135m``; with ``--backend openai``
    the served model's name), or a :class:`harness.models.LoadedModel` already in memory
    (harness.api evaluates a training loop's model object this way).

    Rerunning the same call resumes: finished cells are skipped. A second process aimed at the same
    ``out`` is refused while this one runs (harness.rundir.locked).
    """
    from harness import distributed, models
    from harness.rundir import check_writable, locked
    from harness.store import RunStore

    rank, world, _ = distributed.launched()
    if world > 1 and (prep.request.backend != "hf" or isinstance(model_spec, models.LoadedModel)):
        raise UserError(f"data-parallel evaluation ({world} ranks): --backend hf with a model source only "
                        f"(vLLM parallelises itself: --tensor-parallel; a server takes --max-concurrent)")
    if isinstance(model_spec, models.LoadedModel):
        ...                                     # already loaded (harness.api)
    elif prep.request.backend == "openai":      # a bad path fails before anything slow
        models.locate(prep.request.tokenizer or model_spec, "--tokenizer")
    else:
        if prep.request.tokenizer is not None and not shapes.is_random(model_spec):
            raise UserError(f"--tokenizer: only for --backend openai (a served model) or --model random:SHAPE; "
                            f"--backend {prep.request.backend} loads the model's own tokenizer")
        models.resolve(model_spec, prep.request.tokenizer)
    device = distributed.setup(prep.request.device)[2] if world > 1 else None

    def claim(stack: contextlib.ExitStack) -> None:
        """Rank 0 owns the run directory: checked, locked, a damaged store named before any model loads,
        what ranks left of an interrupted data-parallel run merged."""
        check_writable(out)
        stack.enter_context(locked(out, "a run"))
        if (out / "manifest.json").is_file():
            for _ in RunStore(out).results():
                pass
            RunStore(out).merge_ranks()

    with contextlib.ExitStack() as stack:
        distributed.first(lambda: claim(stack), rank, world)
        if rank > 0:
            console = Console(quiet=True)
        return _evaluate(model_spec, prep, out, console, rank, world, device)


def _load(model_spec, prep: Prepared, console: Console, device=None):
    """(the loaded model, the openai backend when the model is served, the model's recorded id)."""
    from harness import models

    req = prep.request
    if isinstance(model_spec, models.LoadedModel):
        return model_spec, None, model_spec.info["spec"]
    if req.backend == "openai":
        from harness.backends.openai import OpenAIBackend

        served = OpenAIBackend(base_url=req.base_url, model=model_spec, max_concurrent=req.max_concurrent)
        with console.status(f"asking {req.base_url} for {model_spec}"):
            loaded = models.load_served(model_spec, req.tokenizer or model_spec, served.served_max_len())
        loaded.info["base_url"] = req.base_url
        return loaded, served.bind(loaded), model_spec
    with console.status(f"loading {model_spec}"):
        loaded = models.load(model_spec, rope_theta=req.rope_theta, rope_scaling=prep.rope_scaling, dtype=req.dtype,
                             device=str(device) if device is not None else req.device, weights=req.backend == "hf",
                             attn=req.attn, tokenizer=req.tokenizer)
    # The embedded model by name (its cache path is the user's), a hub one by id and commit, a
    # local one by absolute path.
    return loaded, None, models.identity(model_spec, Path(loaded.info["path"]))


def _evaluate(model_spec, prep: Prepared, out: Path, console: Console, rank: int = 0, world: int = 1,
              device=None) -> tuple[list[dict], dict]:
    from harness import distributed, lm_eval_format, models, provenance, tasks
    from harness.runner import run_suite
    from harness.store import RunStore

    req = prep.request
    loaded, served, model_id = _load(model_spec, prep, console, device)
    info = loaded.info
    suites = {name: tasks.get(name).bind(prepared, loaded) for name, prepared in prep.suites.items()}
    _check_lengths(suites, loaded.max_positions, req)
    for suite in suites.values():  # grids that cannot be built fail before the run directory is made
        suite.check()
    if served is not None and any(getattr(s.config, "scorer", "generate") != "generate" for s in suites.values()):
        served.check_prompt_logprobs()   # the needle's loglik scorer
    config = {
        "model": {"id": model_id,
                  **{k: info[k] for k in ("dtype", "rope_parameters", "max_position_embeddings")},
                  # served or random: the tokenizer that made the prompts (a server's URL is not the model's identity)
                  **({"tokenizer": models.identity(req.tokenizer or model_spec, Path(info["path"]))} if served else {}),
                  **({"tokenizer": models.identity(req.tokenizer or shapes.DEFAULT_TOKENIZER, Path(info["path"]))}
                     if shapes.is_random(model_spec) else {})},
        "backend": req.backend + ("-fast" if req.fast and req.backend == "hf" else ""),
        "suites": {name: suite.config.to_dict() for name, suite in suites.items()},
    }
    def open_store() -> None:   # rank 0 writes the manifest (or finds it the same); the others read that store
        RunStore.open(out, {"config": config, "model": info, **provenance.record()})

    distributed.first(open_store, rank, world)
    store = RunStore(out)
    if served is not None:
        console.print(f"model {model_id} served at {req.base_url} (tokenizer {info['path']}); max positions "
                      f"{info['effective_max_positions']}; {req.max_concurrent} requests in flight at most")
    else:
        console.print(f"model {info['name']} ({info['parameters'] / 1e6:.1f}M params, {info['dtype']}: "
                      f"{info['precision']['reason']}, {info['attn_implementation']}, {info['device']}); "
                      f"{format_rope(info['rope_parameters'])}; max positions {info['effective_max_positions']}")
    for suite in suites.values():
        suite.warn(loaded.max_positions)
    backend = served if served is not None else _backend(loaded, req, console, suites)
    tracker = tracking.Tracker(out, name=out.name, config=config, job_type="eval", wandb_project=req.wandb) \
        if rank == 0 else None
    try:
        for suite in suites.values():
            run_suite(suite, backend, store, console, loaded, rank, world)
        results, manifest = list(store.results()), store.read_manifest()
        if tracker is not None:
            lm_eval_format.write(out, results, manifest, store.oom())   # the run in lm-eval's results shape
            tracker.summary(summary_rows(results, manifest), step=req.step)
    finally:
        if tracker is not None:
            tracker.close()
    return results, manifest


SUMMARY_FIELDS = ("suite", "slice", "metric", "value", "n", "stderr", "low", "high", "how")


def summary_rows(results: list[dict], manifest: dict) -> list[dict]:
    """Every suite's summary rows (the terminal table's numbers with their 95% intervals) as dicts."""
    from harness import tasks

    return [{f: getattr(row, f) for f in SUMMARY_FIELDS}
            for name in manifest.get("config", {}).get("suites", {})
            for row in tasks.get(name).summary(results, manifest)]


def _check_lengths(suites: dict, max_positions: int, req: EvalRequest) -> None:
    """Lengths past the model's positions run (where retrieval breaks is the finding), up to
    BEYOND_POSITIONS times them; further only with a RoPE override, which is what makes them meaningful."""
    if req.rope_theta is not None or req.rope_scaling is not None:
        return
    limit = BEYOND_POSITIONS * max_positions
    for name, suite in suites.items():
        longest = max(getattr(suite.config, "lengths", None) or [0])
        if longest > limit:
            raise UserError(f"--lengths: {longest:,} tokens ({name}) is {longest / max_positions:,.0f}x the model's "
                            f"{max_positions:,} positions; at most {BEYOND_POSITIONS}x ({limit:,}) without "
                            f"--rope-theta or --rope-scaling")


def _backend(loaded, req: EvalRequest, console: Console, suites: dict):
    if req.backend == "vllm":
        from harness.backends.vllm import VLLMBackend

        # vLLM reserves KV memory for max_model_len: the grid's longest prompt and answer, not the
        # model's full length (with slack for a chat template and a scored target).
        longest = max((max(getattr(s.config, "lengths", None) or [0]) + s.new_tokens for s in suites.values()), default=0)
        need = longest + 256 if longest else None
        with console.status("starting vLLM"):
            return VLLMBackend(loaded, dtype=loaded.info["precision"]["dtype"], tensor_parallel=req.tensor_parallel,
                               max_model_len=need)
    from harness.backends.hf import HFBackend

    return HFBackend(loaded, fast=req.fast)
