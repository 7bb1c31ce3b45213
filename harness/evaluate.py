"""Evaluate one model on suites into a run directory: what `harness run` does, and each ablate model.

    EvalRequest (flags) -> prepare() (every flag checked, grids resolved: no model yet)
    -> evaluate(model, prepared, out) (load, suites cell by cell into the store) -> results
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console

from harness import shapes, tracking
from harness.backends.options import BACKENDS
from harness.config import setting, settings
from harness.errors import UserError
from harness.values import check_seed, format_rope, parse_names

log = logging.getLogger("harness")
BEYOND_POSITIONS = 32   # the paper's own stretch: a 4K LLaMA-2 evaluated at 128K


@dataclass(frozen=True)
class EvalRequest:
    """Everything `harness run` and ``harness.run`` take besides the model: the common settings here,
    each backend's in its Options (harness.backends.options), each suite's in its Options. The
    command's flags and the API's keywords are generated from these declarations."""

    suites: str = setting("needle", "Comma-separated suites: needle, bookqa, regression, loss.", flag="--suite")
    preset: str | None = setting(None, "Grid preset from the suite's YAML: quick (default), paper, tiny.")
    lengths: str | None = setting(None, "Context lengths in tokens: 1k,2k,4k or 1k:128k:40 (k = 1024).")
    depths: str | None = setting(None, "Needle depths in percent: 0,50,100 or 0:100:10.")
    seed: int = setting(0, "Seed of every random choice: BookQA's offline questions, needle variants' keys and values.")
    backend: str = setting("hf", "hf (transformers), vllm (offline LLM, prefix caching) or openai (a served model: "
                           "--model is its served name, with --base-url and --tokenizer).")
    rope_theta: float | None = setting(None, "Override the RoPE base at eval time, e.g. 5e5.", kind=float)
    rope_scaling: str | None = setting(None, "linear|dynamic|yarn with a factor > 1, e.g. linear:4; or "
                                       "frozen_dynamic:FACTOR@LENGTH, dynamic NTK frozen at LENGTH as the paper "
                                       "evaluated its checkpoint (e.g. frozen_dynamic:10@81920).", metavar="TYPE:FACTOR")
    dtype: str = setting("auto", "auto (bf16 where the device computes it natively: CUDA, CPUs with AVX512-BF16/AMX; "
                         "else fp32), bf16, fp32 or fp16. HARNESS_DTYPE sets what auto picks.")
    device: str | None = setting(None, "cpu or cuda (default: cuda when available).")
    tokenizer: str | None = setting(None, "openai: the served model's tokenizer (default: --model); prompts go as its "
                                    "token ids, so lengths are exact. --model random:SHAPE: its tokenizer (default "
                                    "smollm2-135m).", metavar="PATH|ORG/NAME|smollm2-135m")
    wandb: str | None = setting(None, "Log the summary to this W&B project (WANDB_MODE=offline writes it under the "
                                "run directory); TensorBoard event files are always written (DIR/tensorboard).",
                                metavar="PROJECT")
    step: int = setting(0, "The step the summary is logged at (a training loop's).", flag=None)
    options: dict = field(default_factory=dict)           # suite name -> its Options (missing: defaults)
    backend_options: dict = field(default_factory=dict)   # backend name -> its Options (missing: defaults)

    def options_for(self, name: str):
        from harness import tasks

        return self.options.get(name) or tasks.options(name)

    def for_backend(self, name: str):
        """A backend's options as given (its defaults when none were)."""
        return self.backend_options.get(name) or BACKENDS[name]()

    def flat(self) -> dict:
        """The request as one flat dict, every backend's options beside the common ones: what run
        directories and ablations are keyed by (the shape they had when these were plain fields)."""
        d = asdict(self)
        d.pop("backend_options")
        for name in BACKENDS:
            options = self.for_backend(name)
            later = getattr(options, "keyed_when_given", ())
            d.update({k: v for k, v in asdict(options).items()
                      if k not in later or v != options.__dataclass_fields__[k].default})
        return d


def request_flag_types() -> list[type]:
    """The declarations `harness run` and ``harness.run`` take, in the order they list them."""
    from harness import tasks

    return [EvalRequest, *BACKENDS.values(), *(tasks.get(name).Options for name in tasks.SUITES)]


def request_from_flags(**flags) -> EvalRequest:
    """An EvalRequest from flat flags (the command line's, the API's keywords): each one goes to the
    declaration that owns it; an unknown one is a TypeError."""
    from harness import config, tasks

    types = request_flag_types()
    config.check_keywords(flags, *types, where="run")
    common, *rest = config.split(flags, *types)
    backend = dict(zip(BACKENDS, (cls(**given) for cls, given in zip(BACKENDS.values(), rest))))
    suites = {name: tasks.options(name, **given) for name, given in zip(tasks.SUITES, rest[len(BACKENDS):])}
    return EvalRequest(**common, options=suites, backend_options=backend)


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
    models.parse_device(req.device)
    check_seed(req.seed)
    precision.check(req.dtype)
    if req.backend not in BACKENDS:
        raise UserError(f"--backend: unknown {req.backend!r}; known: {', '.join(BACKENDS)}")
    for name, cls in BACKENDS.items():   # a backend's flag given with another backend
        given = [s for s in settings(cls) if s.given(getattr(req.for_backend(name), s.name))]
        if name != req.backend and given:
            raise UserError(f"{given[0].flag}: only for --backend {name} ({cls.about}), not --backend {req.backend}")
    req.for_backend(req.backend).check(req)
    tracking.check_wandb(req.wandb)
    for name, opts in req.options.items():  # a suite's flag given without the suite
        given = [s for s in settings(type(opts)) if s.given(getattr(opts, s.name))]
        if name not in names and given:
            raise UserError(f"{given[0].flag}: {getattr(opts, given[0].name)!r} is a {name} option; "
                            f"add {name} to --suite")
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

        served_opts = req.for_backend("openai")
        served = OpenAIBackend(base_url=served_opts.base_url, model=model_spec,
                               max_concurrent=served_opts.max_concurrent)
        with console.status(f"asking {served_opts.base_url} for {model_spec}"):
            loaded = models.load_served(model_spec, req.tokenizer or model_spec, served.served_max_len())
        loaded.info["base_url"] = served_opts.base_url
        return loaded, served.bind(loaded), model_spec
    with console.status(f"loading {model_spec}"):
        loaded = models.load(model_spec, rope_theta=req.rope_theta, rope_scaling=prep.rope_scaling, dtype=req.dtype,
                             device=str(device) if device is not None else req.device, weights=req.backend == "hf",
                             attn=req.for_backend("hf").attn, tokenizer=req.tokenizer)
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
        "backend": req.backend + ("-fast" if req.backend == "hf" and req.for_backend("hf").fast else ""),
        "suites": {name: suite.config.to_dict() for name, suite in suites.items()},
    }
    def open_store() -> None:   # rank 0 writes the manifest (or finds it the same); the others read that store
        RunStore.open(out, {"config": config, "model": info, **provenance.record()})

    distributed.first(open_store, rank, world)
    store = RunStore(out)
    if served is not None:
        console.print(f"model {model_id} served at {loaded.info['base_url']} (tokenizer {info['path']}); max positions "
                      f"{info['effective_max_positions']}; {req.for_backend('openai').max_concurrent} requests in "
                      f"flight at most")
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
            return VLLMBackend(loaded, dtype=loaded.info["precision"]["dtype"], tensor_parallel=req.for_backend("vllm").tensor_parallel,
                               max_model_len=need)
    from harness.backends.hf import HFBackend

    hf = req.for_backend("hf")
    return HFBackend(loaded, prefill_chunk=hf.chunk(), fast=hf.fast)
