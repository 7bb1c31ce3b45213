"""`harness ablate`: several mixtures, one base, one budget, every suite, one report.

    plan (print stages, tokens, time estimate) -> [base: tiny from scratch] -> per mixture: data build
    (user cache, keyed by config hash) -> train (same base, budget, seed) -> evaluate base and each
    trained model on every suite -> report.pdf + report.html

The ablation directory::

    ablate.json        the resolved config and plan (a different config in the same --out is refused)
    stages.jsonl       one line per finished stage: name, seconds, tokens (the report's provenance)
    base/              the from-scratch base (preset tiny only)
    train/<mixture>/   training runs (final/ is the stage's completion mark); with --seeds N,
                       train/<mixture>-s<k>/ for k = 0..N-1, trained with seed + k
    eval/<model>/      run stores, one per model (cell-level resume); eval/<mixture>-s<k>/ per seed,
                       pooled by the report (harness.reports.compare.Run.pooled)
    report.pdf, report.html

Every stage is resumable: a finished stage is skipped, an unfinished training run continues from
its last checkpoint, an unfinished evaluation from its last cell.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

from rich.console import Console

from harness import config, rundir, shapes, store
from harness.errors import UserError
from harness.backends.options import HFOptions
from harness.config import setting
from harness.evaluate import EvalRequest
from harness.values import check_seed, format_length

TINY_BASE = "tiny"

# Presets: CLI flags override any field. `paper` is the paper's recipe for GPUs (LLaMA-2 7B to
# 80K on 5B tokens, RoPE base raised to 5e5 as in Xiong et al.); `tiny` is its CPU miniature: a
# small Llama pretrained from scratch at 256 tokens, then extended to 1K on each mixture.
PRESETS: dict[str, dict] = {
    "tiny": dict(base=TINY_BASE, mixtures="per_source,global,cut_4k", tokens="100k", seq_len="1k",
                 rope_theta=1e5, suites="needle,bookqa,regression,loss", eval_preset="tiny",
                 regression_limit=100, loss_bucket="256", base_tokens="300k", base_seq_len="256", lr=1e-3),
    "paper": dict(base=None, mixtures="per_source,global,cut_4k,cut_target,upsample_abg", tokens="5B",
                  seq_len="80k", rope_theta=5e5, suites="needle,bookqa,regression,loss", eval_preset="paper",
                  regression_limit=None, loss_bucket=None, base_tokens=None, base_seq_len=None, lr=2e-5,
                  engine="deepspeed"),
    # The paper's finding in miniature, sized for 8 minutes on one H200 by the rates measured there
    # (docs/mini-finding.md): the embedded SmolLM2-135M (8K positions) extended to 16K on three
    # mixtures, 3M tokens each (one seed: two took 10.2 minutes on 2026-12-04); RoPE base 1e5 -> 1e6;
    # needle 4K-16K x 5 depths x 3 haystack draws and per-domain loss in 4K buckets to 16K, on each model.
    "mini": dict(base="smollm2-135m", mixtures="per_source,cut_4k,global", tokens="3M", seq_len="16k",
                 rope_theta=1e6, suites="needle,loss", eval_preset="mini", samples=3, fast=True,
                 loss_bucket="4k", loss_length="16k", lr=1e-4, batch_tokens="32k", seeds=1, micro_batch=2,
                 grad_ckpt=False, plan_device="h200", base_tokens=None, base_seq_len=None, regression_limit=None),
}


@dataclass(frozen=True)
class AblateFlags:
    """`harness ablate`'s options, declared once: the command's flags and :func:`from_preset`'s
    keywords. Each overrides its preset's value; None: the preset's. The ones without a flag are set
    by presets (and Python callers) only."""

    base: str | None = setting(None, "The base every mixture continues from.",
                               metavar="PATH|ORG/NAME|smollm2-135m|tiny")
    mixtures: str | None = setting(None, "Comma-separated: per_source, global, cut_4k, cut_target, upsample_abg, "
                                   "mixture YAML files or `harness data build` directories.")
    tokens: str | None = setting(None, "Training tokens per mixture: 100k, 5M, 5B (k/M/B = 10^3/10^6/10^9).")
    seq_len: str | None = setting(None, "Training length in tokens, e.g. 1k, 80k (k = 1024).")
    rope_theta: float | None = setting(None, "RoPE base for the extended models, e.g. 5e5.", kind=float)
    suites: str | None = setting(None, "Comma-separated: needle, bookqa, regression, loss (default: all).")
    lengths: str | None = setting(None, "Needle/BookQA lengths (default: the preset's grid).")
    depths: str | None = setting(None, "Needle depths (default: the preset's grid).")
    samples: int | None = setting(None, "Needle: haystack draws per cell (mini: 3).", kind=int)
    source: str | None = setting(None, "Corpus: embedded (default) | slimpajama:DIR | jsonl:PATH | hf:DIR.")
    mix: str | None = setting(None, "Target domain mix of the built-in strategies: slimpajama (default, the "
                              "reference code's) or llama (the paper text's).")
    lr: float | None = setting(None, "Learning rate (tiny: 1e-3; paper: 2e-5).", kind=float)
    batch_tokens: str | None = setting(None, "Tokens per optimizer step (default: the trainer's).")
    engine: str | None = setting(None, "torch or deepspeed (paper preset: deepspeed).")
    regression_limit: int | None = setting(None, "Regression: at most this many documents per task.", kind=int)
    loss_bucket: str | None = setting(None, "Loss suite: tokens per position bucket (tiny: 256).")
    loss_length: str | None = setting(None, "Loss suite: tokens per document (default: each model's max positions).")
    base_tokens: str | None = setting(None, "--base tiny: the from-scratch pretraining budget (default 300k).")
    base_seq_len: str | None = setting(None, "--base tiny: its pretraining length (default 256).")
    save_every: int | None = setting(None, "Checkpoint every N training steps (resume points).", kind=int)
    seed: int | None = setting(None, "One seed for data, training and evaluation (default 0).", kind=int)
    seeds: int | None = setting(None, "Train each mixture N times (seeds seed..seed+N-1; the base and the data stay "
                                "one): the report pools them, their spread in every interval.", kind=int)
    launcher: str | None = setting(None, "Run each training stage as CMD's processes, e.g. 'torchrun "
                                   "--nproc_per_node 8' or 'deepspeed --num_gpus 8' (default: in this process; "
                                   "--engine deepspeed: one child process per stage).", metavar="CMD")
    out: str | None = setting(None, "Ablation directory (default: runs/ablate-<preset>). Rerunning resumes it.",
                              metavar="DIRECTORY")
    # Presets' own settings (no flag): the evaluation grid preset, hf's batched decoding, training's
    # micro-batch and activation checkpointing, the device the plan estimates for.
    eval_preset: str | None = setting(None, "The suites' grid preset.", flag=None)
    fast: bool | None = setting(None, "hf: batched decoding over cached prefixes.", flag=None, kind=bool)
    micro_batch: int | None = setting(None, "Training sequences per forward.", flag=None, kind=int)
    grad_ckpt: bool | None = setting(None, "Training's activation checkpointing.", flag=None, kind=bool)
    plan_device: str | None = setting(None, "The plan's estimates for a named GPU (estimate.NAMED).", flag=None)
    dtype: str | None = setting(None, "Evaluation and training dtype (default auto).", flag=None)
    device: str | None = setting(None, "Evaluation device.", flag=None)


@dataclass
class AblateConfig:
    base: str
    mixtures: list[str]
    tokens: int
    seq_len: int
    rope_theta: float | None
    out: str
    source: str = "embedded"
    mix: str = "slimpajama"             # target domain mix of the built-in strategies (mixture.MIXES)
    seed: int = 0
    seeds: int = 1                      # training seeds per mixture: seed, seed + 1, ... (the base stays one)
    lr: float = 2e-5
    batch_tokens: int | None = None
    engine: str = "torch"
    save_every: int = 0
    base_tokens: int | None = None      # from-scratch base only
    base_seq_len: int | None = None
    evaluation: EvalRequest = field(default_factory=EvalRequest)
    launcher: str | None = None         # training stages run as `LAUNCHER -m harness train ...` (e.g. torchrun)
    micro_batch: int = 1                # sequences per forward in training (TrainConfig.micro_batch)
    grad_ckpt: bool = True              # activation checkpointing in training
    plan_device: str | None = None      # the plan's estimates: None = this machine, or a named GPU (estimate.NAMED)

    def __post_init__(self):
        from harness.data import corpus, mixture

        # The training stages' settings checked now, before the corpus or a model is opened: a bad
        # --lr used to surface after a corpus fetch.
        self.train_config(base=self.base, data="", out=self.out, seed=self.seed)  # --seed among them
        mixture.check_mix(self.mix)
        corpus.check_source(self.source)
        if not 1 <= self.seeds <= 100:
            raise UserError(f"--seeds: {self.seeds} must be between 1 and 100 (training runs per mixture)")
        check_seed(self.seed + self.seeds - 1, "--seed + --seeds - 1")
        if self.launcher is not None:
            launcher_argv(self.launcher)

    def train_config(self, *, base: str, data: str, out: str, seed: int):
        """One training stage's config (its __post_init__ checks every value)."""
        from harness.trainer.config import TrainConfig

        return TrainConfig(base=base, data=data, seq_len=self.seq_len, tokens=self.tokens, out=out,
                           rope_theta=self.rope_theta, lr=self.lr, batch_tokens=self.batch_tokens, engine=self.engine,
                           seed=seed, save_every=self.save_every, dtype=self.evaluation.dtype,
                           micro_batch=self.micro_batch, grad_ckpt=self.grad_ckpt)

    def hashed(self) -> dict:
        d = asdict(self)
        d["evaluation"] = self.evaluation.flat()   # keyed as when backends' options were the request's fields
        d.pop("out")
        d.pop("save_every")
        d.pop("launcher")   # how the stages' processes start, not what they compute
        d.pop("plan_device")
        for name in ("micro_batch", "grad_ckpt"):   # ablations made before these existed hash without
            if d[name] == self.__dataclass_fields__[name].default:
                d.pop(name)
        if d["seeds"] == 1:  # the key ablations made before --seeds existed hash without
            d.pop("seeds")
        return d

    def replicas(self, label: str) -> list[tuple[str, int]]:
        """(directory name, training seed) of each training run of one mixture."""
        if self.seeds == 1:
            return [(label, self.seed)]
        return [(f"{label}-s{k}", self.seed + k) for k in range(self.seeds)]


@dataclass
class Mixture:
    label: str        # the name in reports: a strategy name, a YAML stem or a build directory's name
    strategy: str     # what `data build --strategy` takes ("" for a prebuilt directory)
    data: str         # the build directory


def _mixture(spec: str) -> tuple[str, str, str | None]:
    """(label, strategy, prebuilt dir) for one --mixtures item."""
    from harness.data import mixture

    path = Path(spec)
    if path.is_dir():
        if not (path / "manifest.json").is_file():
            raise UserError(f"--mixtures: {spec!r} is a directory but not a finished data build (no manifest.json)")
        return path.resolve().name, "", str(path.resolve())
    if spec.endswith((".yaml", ".yml")) and path.is_file():
        return path.stem, str(path.resolve()), None
    if spec not in mixture.STRATEGIES:
        raise UserError(f"--mixtures: unknown mixture {spec!r}; known: {', '.join(mixture.STRATEGIES)}, "
                        f"a mixture YAML file, or a `harness data build` directory")
    return spec, spec, None


def resolve_mixtures(specs: list[str], seq_len: int, tokenizer) -> list[Mixture]:
    """Check every mixture before any work; builds land in the user cache, keyed by their config."""
    from harness.data import mixture, packing

    if not specs:
        raise UserError("--mixtures: give at least one (e.g. per_source,global,cut_4k)")
    want = packing.vocab_hash(tokenizer)
    out, seen = [], set()
    for spec in specs:
        label, strategy, prebuilt = _mixture(spec)
        if label in seen:
            raise UserError(f"--mixtures: {label!r} is named twice; each mixture needs its own name")
        seen.add(label)
        if prebuilt:
            manifest = rundir.read_json(Path(prebuilt) / "manifest.json", "--mixtures")
            got = manifest.get("tokenizer", {})
            if got.get("vocab_hash") != want:
                raise UserError(f"--mixtures: {spec!r} was built with tokenizer {got.get('name')!r} (vocabulary "
                                f"{got.get('vocab_hash')}), not the base's ({want}); all mixtures must share the "
                                f"base's tokenizer: rebuild it with `harness data build --tokenizer <base>`")
            if manifest.get("seq_len") != seq_len:
                raise UserError(f"--mixtures: {spec!r} was packed at {manifest.get('seq_len')} tokens, not --seq-len "
                                f"{seq_len}; rebuild it or change --seq-len")
            out.append(Mixture(label, "", prebuilt))
        else:
            mixture.resolve(strategy, seq_len)  # a malformed YAML fails here
            out.append(Mixture(label, strategy, ""))
    return out


def _mix_for(cfg: AblateConfig, strategy: str) -> str | None:
    """The --mix of a built-in strategy; a mixture YAML brings its own weights."""
    from harness.data import mixture

    return cfg.mix if strategy in mixture.STRATEGIES else None


def _recorded_data(out: Path, cfg: AblateConfig) -> dict[str, str]:
    """label -> finished data build, as the ablation of this config in ``out`` recorded them."""
    record = out / store.ABLATION
    if not record.is_file():
        return {}
    old = rundir.read_json(record, "--out")
    if old.get("config_hash") != rundir.config_hash(cfg.hashed()):
        return {}  # another config: refused below, with the keys that differ
    return {m["label"]: m["data"] for m in old.get("plan", {}).get("mixtures", [])
            if isinstance(m, dict) and isinstance(m.get("data"), str) and (Path(m["data"]) / "manifest.json").is_file()}


def _prepare_data(cfg: AblateConfig, strategy: str, tokenizer_name: str):
    """A mixture's data build, checked and opened (harness.data.build.Prepared)."""
    from harness.data import build

    return build.prepare(source=cfg.source, strategy=strategy, tokens=cfg.tokens, seq_len=cfg.seq_len,
                         tokenizer=tokenizer_name, seed=cfg.seed, mix=_mix_for(cfg, strategy))


def _data_dir(strategy: str, prepared) -> Path:
    """The cache directory of a mixture's build: named by the build's whole config."""
    from harness.data import build

    return build.cache_path(f"ablate-{Path(strategy).stem}", prepared.config)


def _estimate(cfg: AblateConfig, base_config, n_mixtures: int, prep) -> list[tuple[str, int, float]]:
    """(stage, tokens, FLOP) per kind of stage, from the model shape and the grids."""
    from harness import estimate, flops

    rows = []
    if cfg.base == TINY_BASE:
        rows.append(("base (from scratch)", cfg.base_tokens,
                     cfg.base_tokens / cfg.base_seq_len * flops.train_flops(base_config, cfg.base_seq_len)))
    per_train = cfg.tokens / cfg.seq_len * flops.train_flops(base_config, cfg.seq_len)
    n_trained = n_mixtures * cfg.seeds
    rows.append((f"train x {n_trained}", cfg.tokens * n_trained, per_train * n_trained))
    for name, cost in _suite_costs(prep):   # the suites whose cells are known before a model loads
        if cost.cells:
            tokens = sum(c.length for c in cost.cells)
            total = sum(estimate.span_flops(base_config, cost.spans, cost.new_tokens))
            rows.append((f"{name} x {n_trained + 1} models", tokens * (n_trained + 1), total * (n_trained + 1)))
    return rows


def _suite_costs(prep) -> list[tuple[str, object]]:
    """(suite, its Cost) for each suite evaluated whose cost is known without a model (Suite.cost)."""
    from harness import tasks

    costs = [(name, tasks.get(name).cost(prepared)) for name, prepared in prep.suites.items()]
    return [(name, cost) for name, cost in costs if cost is not None]


@dataclass
class Stage:
    """One resumable step of an ablation: skipped when stages.jsonl says it finished."""

    name: str                 # base | data:<mixture> | train:<mixture>[-s<k>] | eval:<model>[-s<k>]
    tokens: int | None
    work: Callable[[], object]
    extra: dict = field(default_factory=dict)


def run(cfg: AblateConfig, *, console: Console, reference: str | None = None, plan_only: bool = False) -> Path | None:
    """Run (or resume) the whole ablation; returns the report's PDF path. ``plan_only``: print the
    plan with its estimate and stop, writing nothing."""
    from harness import distributed, models
    from harness.evaluate import prepare
    from harness.reports import document

    if distributed.launched()[1] > 1:
        raise UserError("ablate: run it as one process (it writes the data, run directories and report); "
                        "give --launcher 'torchrun --nproc_per_node N' to run its training stages on N GPUs")
    out = Path(cfg.out)
    rundir.check_writable(out)
    prep = prepare(cfg.evaluation)
    tokenizer_name = "smollm2-135m" if cfg.base == TINY_BASE else cfg.base
    tokenizer = models.read_tokenizer(models.resolve(tokenizer_name), "--base")
    mixtures = resolve_mixtures(cfg.mixtures, cfg.seq_len, tokenizer)
    if plan_only:
        _print_plan(cfg, tokenizer, mixtures, prep, console)
        return None
    recorded = _recorded_data(out, cfg)
    prepared = {}  # label -> its build's inputs, opened once: their config names the cache directory
    for m in mixtures:  # a resumed ablation keeps the builds it made, whatever the cache names now
        if not (m.data or recorded.get(m.label)):
            prepared[m.label] = _prepare_data(cfg, m.strategy, tokenizer_name)
        m.data = m.data or recorded.get(m.label) or str(_data_dir(m.strategy, prepared[m.label]))
    plan = stages(cfg, prep, mixtures, tokenizer_name, console, prepared)  # every stage's config checked: nothing written yet
    with rundir.locked(out, "an ablation"):  # a second ablation into the same --out is refused
        keyed = rundir.KeyedDir(out, store.ABLATION, "an ablation")
        if keyed.existing(cfg.hashed()) is not None:
            console.print(f"resuming the ablation in {out}")
        evals = {m.label: [name for name, _ in cfg.replicas(m.label)] for m in mixtures}
        keyed.write(cfg.hashed(), plan={"base": cfg.base, "mixtures": [asdict(m) for m in mixtures],
                                        "models": ["base"] + [m.label for m in mixtures], "evals": evals})
        _print_plan(cfg, tokenizer, mixtures, prep, console)
        log = store.stages(out)
        log.repair()
        done = {r["stage"] for r in log.records()}
        for stage in plan:
            if stage.name not in done:
                started = time.perf_counter()
                stage.work()
                log.append({"stage": stage.name, "seconds": round(time.perf_counter() - started, 2),
                            "tokens": stage.tokens, **stage.extra})
        return document.write_report([out], out / "report.pdf", reference=reference, console=console)


def stages(cfg: AblateConfig, prep, mixtures: list[Mixture], tokenizer_name: str, console: Console,
           prepared: dict | None = None) -> list[Stage]:
    """The ablation in order: [the tiny base from scratch], per mixture its data then its training
    from the same base (once per seed), then every suite on the base and on each trained model.
    ``prepared``: label -> the opened inputs of a build that lands in the cache (:func:`_data_dir`)."""
    from harness.data import build

    out = Path(cfg.out)
    plan, base_path = [], cfg.base
    if cfg.base == TINY_BASE:
        base_path = str(out / "base" / "final")
        plan.append(Stage("base", cfg.base_tokens, partial(_train_tiny_base, cfg, console)))
    trained = [("base", base_path)]
    for m in mixtures:
        if m.label in (prepared or {}):
            make = partial(build.build_prepared, prepared[m.label], Path(m.data), console=console, key_file=True)
        elif m.strategy:  # a build this ablation recorded: found done, or checked against its config
            make = partial(build.build, source=cfg.source, strategy=m.strategy, tokens=cfg.tokens, seq_len=cfg.seq_len,
                           tokenizer=tokenizer_name, seed=cfg.seed, out=Path(m.data), mix=_mix_for(cfg, m.strategy),
                           console=console)
        else:
            make = lambda: None  # noqa: E731  (a prebuilt directory, checked by resolve_mixtures)
        plan.append(Stage(f"data:{m.label}", cfg.tokens, make, {"path": m.data}))
        for name, seed in cfg.replicas(m.label):
            tcfg = cfg.train_config(base=base_path, data=m.data, out=str(out / "train" / name), seed=seed)
            plan.append(Stage(f"train:{name}", cfg.tokens, partial(_train, tcfg, console, cfg.launcher), {"seed": seed}))
            trained.append((name, str(out / "train" / name / "final")))
    plan += [Stage(f"eval:{label}", None, partial(_evaluate, label, model, prep, out / "eval" / label, console))
             for label, model in trained]
    return plan


def _evaluate(label: str, model: str, prep, run_dir: Path, console: Console) -> None:
    from harness.evaluate import evaluate

    console.rule(f"evaluate {label}")
    evaluate(model, prep, run_dir, console)


def _print_plan(cfg: AblateConfig, tokenizer, mixtures: list[Mixture], prep, console: Console) -> None:
    """Stages, tokens and a time estimate at the measured GEMM peak, before any work starts."""
    import torch

    from harness import flops, models, precision
    from harness.trainer import loop

    if cfg.base == TINY_BASE:
        base_config = shapes.config(TINY_BASE, tokenizer, cfg.base_seq_len)
    else:
        base_config = models.read_config(models.resolve(cfg.base), "--base")
    if cfg.plan_device:
        _print_named_plan(cfg, base_config, mixtures, prep, console)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    compute = precision.resolve(cfg.evaluation.dtype, device)  # training's autocast follows the same rule
    peak = flops.measure_peak(device, compute.torch_dtype)
    console.print(f"[bold]ablate[/]: base {cfg.base}; mixtures {', '.join(m.label for m in mixtures)}; "
                  f"{cfg.tokens:,} tokens each at {format_length(cfg.seq_len)}"
                  f"{f', RoPE base {cfg.rope_theta:g}' if cfg.rope_theta else ''}; "
                  f"{f'seeds {cfg.seed}..{cfg.seed + cfg.seeds - 1}' if cfg.seeds > 1 else f'seed {cfg.seed}'}; "
                  f"suites {', '.join(prep.suites)}")
    total = 0.0
    for name, tokens, cost in _estimate(cfg, base_config, len(mixtures), prep):
        # Training here reaches about 15% of the GEMM peak (measured), generation-heavy evaluation less:
        # the estimate is a planning figure, the stage log records what it really took.
        seconds = cost / (peak * (0.15 if "train" in name or "base" in name else 0.1))
        total += seconds
        console.print(f"  {name:<24} {tokens:>14,} tokens  {cost / 1e12:>10,.1f} TFLOP  ~{seconds / 60:,.1f} min")
    console.print(f"  estimate: ~{total / 60:,.0f} min at the measured {compute.name} peak {peak / 1e12:.2f} TFLOP/s "
                  f"({compute.reason}), plus data "
                  f"builds, BookQA/regression/loss evaluation and model loads; finished stages are skipped")


def stage_estimates(cfg: AblateConfig, base_config, mixtures: list[Mixture], prep) -> list[tuple[str, float]]:
    """(stage, estimated seconds) on ``cfg.plan_device``, from the rates measured there
    (harness.estimate.NAMED): every stage the run will log, plus conversion, starts and the report."""
    from harness import estimate, flops, models

    rates = estimate.NAMED[cfg.plan_device]
    rows = []
    if cfg.base in models.EMBEDDED:
        rows.append(("convert (GGUF -> HF, once)", rates["convert_s"]))
    rows.append(("start, plan", rates["install_s"] + rates["process_s"]))
    for k, m in enumerate(mixtures):
        rows.append((f"data:{m.label}", rates["build_s"] + (rates["tokenize_s"] if k == 0 else 0.0)))
    per_run = cfg.tokens / cfg.seq_len * flops.train_flops(base_config, cfg.seq_len) / rates["train_flop_per_s"]
    for m in mixtures:
        for name, _ in cfg.replicas(m.label):
            rows.append((f"train:{name}", rates["load_s"] + rates["save_s"] + per_run))
    per_eval = rates["load_s"]
    batched = cfg.evaluation.for_backend("hf").fast   # decoding in batches of equal-length prompts
    for _, cost in _suite_costs(prep):
        per_eval += estimate.named_seconds(cost, base_config, rates, batched)
    rows += [(f"eval:{label}", per_eval + (rates["first_eval_s"] if k == 0 else 0.0)) for k, label in
             enumerate(["base"] + [name for m in mixtures for name, _ in cfg.replicas(m.label)])]
    rows.append(("report", rates["report_s"]))
    return rows


def _print_named_plan(cfg: AblateConfig, base_config, mixtures: list[Mixture], prep, console: Console) -> None:
    from harness import estimate

    rates = estimate.NAMED[cfg.plan_device]
    console.print(f"[bold]ablate[/]: base {cfg.base}; mixtures {', '.join(m.label for m in mixtures)}; "
                  f"{cfg.tokens:,} tokens each at {format_length(cfg.seq_len)}"
                  f"{f', RoPE base {cfg.rope_theta:g}' if cfg.rope_theta else ''}; seeds {cfg.seed}..{cfg.seed + cfg.seeds - 1}; "
                  f"suites {', '.join(prep.suites)}")
    console.print(f"plan on {rates['name']} (estimated from {rates['source']}):")
    total = 0.0
    for name, seconds in stage_estimates(cfg, base_config, mixtures, prep):
        total += seconds
        console.print(f"  {name:<28} ~{seconds / 60:5.2f} min")
    console.print(f"  {'total':<28} ~{total / 60:5.2f} min (estimated)")


def _train_tiny_base(cfg: AblateConfig, console: Console) -> Path:
    """Stage 0 of the tiny preset: the short-context base, pretrained from scratch."""
    from harness.data import build
    from harness.trainer import loop

    data = build.from_scratch_data(cfg.base_seq_len, cfg.base_tokens, cfg.seed, console)
    return _train(loop.TrainConfig(base="", from_scratch=TINY_BASE, data=str(data), seq_len=cfg.base_seq_len,
                                   tokens=cfg.base_tokens, out=str(Path(cfg.out) / "base"), lr=1e-3,
                                   batch_tokens=8 * cfg.base_seq_len, seed=cfg.seed, save_every=cfg.save_every,
                                   dtype=cfg.evaluation.dtype), console, cfg.launcher)


def _train(tcfg, console: Console, launcher: str | None = None) -> Path:
    """One training stage: new, resumed from its last good checkpoint, started again when it had
    none, or (finished) its final checkpoint as it is: the trainer decides each.

    With a launcher (several GPUs: ``torchrun --nproc_per_node 8``, ``deepspeed --num_gpus 8``) the
    stage is that launcher's processes running `harness train`; with DeepSpeed and no launcher it is
    one child process. Either way the stage's engine and memory go when its processes exit
    (DeepSpeed keeps references to an engine that an in-process stage could not free)."""
    from harness.trainer import loop

    resume = (Path(tcfg.out) / "train_config.json").is_file()
    if launcher is None and tcfg.engine != "deepspeed":
        return loop.train(tcfg, resume=resume, console=console)
    cmd = [*launcher_argv(launcher), "train", *tcfg.argv(), *(["--resume"] if resume else [])]
    console.print(f"[dim]$ {shlex.join(cmd)}[/]")
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise UserError(f"training stage {Path(tcfg.out).name}: `{shlex.join(cmd[:3])} ... train` exited with "
                        f"{code} (its messages are above); fix that and rerun the ablation: it resumes")
    return Path(tcfg.out) / "final"


def launcher_argv(launcher: str | None) -> list[str]:
    """The command before `train`: ``python -m harness``, or the launcher with the harness as its
    module (torchrun ``-m harness``; the deepspeed launcher ``--module harness``)."""
    if launcher is None:
        return [sys.executable, "-m", "harness"]
    try:
        parts = shlex.split(launcher)
    except ValueError as exc:
        raise UserError(f"--launcher: {launcher!r} cannot be split into words ({exc})") from None
    if not parts or shutil.which(parts[0]) is None:
        raise UserError(f"--launcher: {parts[0] if parts else launcher!r} is not a program on PATH; give e.g. "
                        f"'torchrun --nproc_per_node 8' or 'deepspeed --num_gpus 8'")
    return [*parts, "--module" if Path(parts[0]).name == "deepspeed" else "-m", "harness"]


def from_preset(preset: str | None = None, **flags) -> AblateConfig:
    """:class:`AblateFlags` by name (None = not given) over the preset's values; an unknown name is a
    TypeError."""
    from harness.values import parse_budget, parse_length

    config.check_keywords(flags, AblateFlags, where="from_preset")
    name = preset or "tiny"
    if name not in PRESETS:
        raise UserError(f"--preset: unknown {name!r} for ablate; known: {', '.join(PRESETS)}")
    p = dict(PRESETS[name])
    given = {k: v for k, v in flags.items() if v is not None}
    p.update(given)
    p["out"] = p.get("out") or str(Path("runs") / f"ablate-{name}")
    if not p.get("base"):
        raise UserError(f"--base: required with --preset {name} (the paper extends LLaMA-2 7B); "
                        f"give a model directory or smollm2-135m")
    tiny = p["base"] == TINY_BASE
    if tiny:  # the from-scratch base's own budget (the tiny preset's values when another preset lacks them)
        p["base_tokens"] = p.get("base_tokens") or PRESETS["tiny"]["base_tokens"]
        p["base_seq_len"] = p.get("base_seq_len") or PRESETS["tiny"]["base_seq_len"]
    from harness import tasks

    # The preset's suite options count for the suites evaluated (tiny's regression limit is moot without it).
    named = {s.strip() for s in str(p["suites"]).split(",")}
    options = {"regression": dict(regression_limit=p.get("regression_limit")),
               "loss": dict(loss_bucket=p.get("loss_bucket"), loss_length=p.get("loss_length")),
               **({"needle": dict(samples=p["samples"])} if p.get("samples") else {})}
    evaluation = EvalRequest(suites=p["suites"], preset=p.get("eval_preset"), lengths=p.get("lengths"),
                             depths=p.get("depths"), seed=p.get("seed", 0), dtype=p.get("dtype", "auto"),
                             device=p.get("device"), backend_options={"hf": HFOptions(fast=bool(p.get("fast", False)))},
                             options={name: tasks.options(name, **values) for name, values in options.items()
                                      if name in named})
    return AblateConfig(
        base=p["base"], mixtures=[s.strip() for s in p["mixtures"].split(",") if s.strip()],
        tokens=parse_budget(str(p["tokens"]), "--tokens"), seq_len=parse_length(str(p["seq_len"]), "--seq-len"),
        rope_theta=p.get("rope_theta"), out=str(p["out"]), source=p.get("source", "embedded"),
        mix=p.get("mix", "slimpajama"), seed=p.get("seed", 0), seeds=p.get("seeds", 1),
        lr=p.get("lr", 2e-5), batch_tokens=parse_budget(str(p["batch_tokens"]), "--batch-tokens") if p.get("batch_tokens") else None,
        engine=p.get("engine", "torch"), save_every=p.get("save_every", 0),
        base_tokens=parse_budget(str(p["base_tokens"]), "--base-tokens") if tiny else None,
        base_seq_len=parse_length(str(p["base_seq_len"]), "--base-seq-len") if tiny else None,
        evaluation=evaluation, launcher=p.get("launcher"), micro_batch=p.get("micro_batch", 1),
        grad_ckpt=p.get("grad_ckpt", True), plan_device=p.get("plan_device"))
