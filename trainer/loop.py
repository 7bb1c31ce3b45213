"""Continual pretraining: RoPE extension on packed mixtures. ``train`` reads top to bottom:

    _setup (processes, dtype in force, tokenizer + shards of the same vocabulary, step plan)
    -> _open_run_dir (a new run, or the same config resumed) -> _load_model (RoPE raised, max
    positions set) -> _engine (torch | deepspeed) -> [_resume from the latest Checkpoint]
    -> _loop (steps; metrics.jsonl and TensorBoard; a Checkpoint every --save-every) -> final Checkpoint

Defaults follow the paper: AdamW at a constant 2e-5 after a short linear warm-up, bf16 autocast
where the device computes bf16 natively (fp32 elsewhere: harness.precision), gradient
checkpointing, gradient accumulation up to the batch size in tokens, cross-document attention
over packed sequences (``doc_mask`` masks per document).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from harness import distributed, flops, models, oom, precision, rundir, shapes, tracking
from harness.errors import UserError
from harness.data import shards as shard_io
from harness.memory import PeakMemory
from harness.trainer.config import TrainConfig, check_engine  # noqa: F401 (loop.TrainConfig: what callers name)
from harness.trainer.engines import DeepSpeedEngine, TorchEngine, load_state
from harness.values import format_rope

PAPER_BATCH_TOKENS = 4 * 1024 * 1024
METRICS = "metrics.jsonl"


class Diverged(UserError):
    """The loss became NaN or inf: the run stops and keeps its last good checkpoint."""

    exit_code = 1


class StepOutOfMemory(UserError):
    """A step did not fit in the GPU's memory: the machine, not the input (exit 1). The run stops
    with one line saying what to change, and keeps its last checkpoint for ``--resume``."""

    exit_code = 1


def _load_model(cfg: TrainConfig, tokenizer, device: torch.device):
    from transformers import LlamaForCausalLM

    attn = models.attn_implementation(device, cfg.attn, cfg.doc_mask)
    if cfg.from_scratch:
        config = shapes.config(cfg.from_scratch, tokenizer, cfg.seq_len)
        config._attn_implementation = attn
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
        shape = "tiny-llama" if cfg.from_scratch == "tiny" else cfg.from_scratch
        name = f"{shape}-{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M"
    else:
        path = models.resolve(cfg.base)
        config = models.read_config(path, "--base")
        models.apply_rope(config, cfg.rope_theta, cfg.rope_scaling)
        # The model is trained at seq_len: that is now its max positions (the scaling, if any,
        # keeps the original length it is relative to in rope_parameters).
        config.max_position_embeddings = max(int(config.max_position_embeddings), cfg.seq_len)
        model = models.read_weights(path, config, "--base", dtype=torch.float32, attn_implementation=attn)
        name = models.display_name(path)
    if cfg.grad_ckpt:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):    # transformers >= 5.23
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:                                                   # 5.17-5.22 (the GPU machine has 5.17)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False
    return model, name


def _plan(cfg: TrainConfig, world: int) -> tuple[int, int, int]:
    """(sequences per step, micro-steps per step, steps) from the token budget and batch size."""
    unit = cfg.seq_len * cfg.micro_batch * world
    if cfg.batch_tokens is None:
        wanted = min(PAPER_BATCH_TOKENS, cfg.tokens // 10)
    else:
        wanted = cfg.batch_tokens
    accum = max(1, wanted // unit)
    per_step = accum * cfg.micro_batch * world
    steps = cfg.tokens // (per_step * cfg.seq_len)
    if steps < 1:
        raise UserError(f"--tokens: {cfg.tokens:,} is smaller than one batch ({per_step * cfg.seq_len:,} tokens: "
                        f"{per_step} sequences of {cfg.seq_len}); raise --tokens or lower --batch-tokens")
    return per_step, accum, steps


class Checkpoint:
    """One checkpoint directory, saved and restored whole.

    It holds an HF model directory (``from_pretrained`` loads it), the tokenizer, the engine's own
    state (optimizer, scheduler; DeepSpeed's shards), ``trainer_state.json`` (step, data position,
    tokens, config hash), ``SOURCE.json`` (what it was trained from) and ``rng.pt`` (every RNG), and
    is published by :func:`harness.rundir.publishing`: a killed save leaves the previous copy.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def all(cls, out: Path) -> "list[Checkpoint]":
        """The run's step checkpoints, newest first (a save killed midway left none of its own)."""
        root = Path(out) / "checkpoints"
        for path in root.glob("step-*") if root.is_dir() else []:
            rundir.recover(path)
        found = sorted(root.glob("step-[0-9]*[0-9]")) if root.is_dir() else []
        return [cls(p) for p in reversed(found) if p.is_dir()]

    @classmethod
    def latest(cls, out: Path) -> "Checkpoint | None":
        rundir.recover(Path(out) / "final")
        found = cls.all(out)
        return found[0] if found else None

    def complete(self) -> bool:
        return (self.path / "trainer_state.json").is_file()

    @classmethod
    def at_step(cls, out: Path, step: int) -> "Checkpoint":
        return cls(Path(out) / "checkpoints" / f"step-{step:06d}")

    def save(self, engine, tokenizer, state: dict, source: dict, rank: int, world: int) -> None:
        shared = self.path.with_name(f".{self.path.name}.shared")  # every rank writes its engine shards here
        try:
            if rank == 0:
                shutil.rmtree(shared, ignore_errors=True)
                shared.mkdir(parents=True)
            distributed.barrier(world)
            engine.save(shared, rank)
            weights = engine.full_state_dict(rank)
            distributed.barrier(world)
            if rank == 0:
                with rundir.publishing(self.path) as new:
                    os.rmdir(new)
                    os.rename(shared, new)
                    engine.model.save_pretrained(new, state_dict=weights, safe_serialization=True)
                    tokenizer.save_pretrained(new)
                    (new / "trainer_state.json").write_text(json.dumps(state, indent=2))
                    (new / "SOURCE.json").write_text(json.dumps(source, indent=2))
                    torch.save(_rng_state(), new / "rng.pt")
            distributed.barrier(world)
        except Exception as exc:
            why = _write_failure(exc, self.path.parent)  # before the partial copy is removed: it filled the disk
            if rank == 0:
                shutil.rmtree(shared, ignore_errors=True)
            if why is None:
                raise
            raise OSError(getattr(exc, "errno", None) or errno.ENOSPC,
                          f"the checkpoint could not be written ({why}); earlier checkpoints are intact",
                          str(self.path)) from None

    def restore(self, engine) -> dict:
        """Load the engine's state and every RNG; returns the trainer state (step, position, tokens).
        A damaged or missing file is a UserError naming it (the caller falls back to an older one)."""
        f = self.path / "trainer_state.json"
        try:
            state = json.loads(f.read_text())
            int(state["step"]), int(state["position"]), int(state["tokens"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"--resume: {f} is damaged or missing ({type(exc).__name__}: {exc})") from None
        engine.load(self.path)
        _set_rng_state(load_state(self.path / "rng.pt"))
        return state


def _write_failure(exc: Exception, where: Path) -> str | None:
    """What went wrong when a checkpoint write failed for a reason outside the program: an OSError,
    or torch.save's own error when the disk it writes to is full; None for anything else (a bug)."""
    if isinstance(exc, OSError):
        return f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
    text = str(exc)
    if "inline_container" in text or "PytorchStreamWriter" in text:  # torch.save's writer
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            free = None
        if free is not None and free < 16 * 1024**2:
            return f"{os.strerror(errno.ENOSPC)}: {free:,} bytes free; torch.save: {text.strip().splitlines()[0][:120]}"
    return None


def _rng_state() -> dict:
    """Every RNG's state as tensors and plain numbers (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}


def _set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    n = rng["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))


def latest_checkpoint(out: Path) -> Path | None:
    ckpt = Checkpoint.latest(out)
    return ckpt.path if ckpt else None


@dataclass
class Run:
    """What every step of a training run reads: where it runs, on what data, in how many steps."""

    cfg: TrainConfig
    out: Path
    rank: int
    world: int
    device: torch.device
    compute: precision.Precision
    tokenizer: object
    data: shard_io.PackedShards
    per_step: int       # sequences per optimizer step (all processes)
    accum: int          # micro-steps per optimizer step
    steps: int
    warmup: int
    digest: str = ""    # the config hash (set when the run directory is checked)
    hashed: dict = field(default_factory=dict)   # what the hash covers (written as train_config.json)
    say: object = print

    def tokens_at(self, step: int) -> int:
        return step * self.per_step * self.cfg.seq_len


def train(cfg: TrainConfig, *, resume: bool = False, console=None, stop_after: int | None = None) -> Path:
    """Run (or resume) continual pretraining; returns the final checkpoint's directory."""
    from rich.console import Console

    console = console or Console(stderr=True)
    run = _setup(cfg, console)
    # One writer per run directory: rank 0 holds the lock for its ranks (another launch is refused).
    with rundir.locked(run.out, "a training run") if run.rank == 0 else contextlib.nullcontext(), \
            distributed.launch_env_kept():
        return _train(run, resume, console, stop_after)


def _train(run: Run, resume: bool, console, stop_after: int | None) -> Path:
    cfg = run.cfg
    finished = _check_run_dir(run, resume)  # nothing is written before the model has loaded
    if finished is not None:
        run.say(f"{run.out}: this run has finished ({finished.name}); nothing to do")
        return finished
    model, base_name = _load_model(cfg, run.tokenizer, run.device)
    _open_run_dir(run)
    engine = _engine(run, model)
    step, position = _resume(run, engine)
    source = {"name": f"{base_name}-{run.out.name}", "base": cfg.base if not cfg.from_scratch else cfg.from_scratch,
              "data": str(cfg.data), "tokens": cfg.tokens, "seq_len": cfg.seq_len}
    meter = _Meter(run, engine)
    run.say(f"train {source['name']}: {run.steps} steps x {run.per_step} sequences x {cfg.seq_len} = "
            f"{run.tokens_at(run.steps):,} tokens ({run.accum} micro-steps of {cfg.micro_batch} on {run.world} "
            f"{run.device.type} process{'es' if run.world > 1 else ''}, engine {engine.name}); lr {cfg.lr:g}, "
            f"warm-up {run.warmup}; {format_rope(engine.model.config.rope_parameters)}; doc mask "
            f"{'on' if cfg.doc_mask else 'off'}; attention {engine.model.config._attn_implementation}"
            f"{' (auto)' if cfg.attn == 'auto' else ''}; {run.compute.name} ({run.compute.reason}), "
            f"MFU against {meter.peak_source}")
    state = _loop(run, engine, meter, source, step, position, console, stop_after)
    if state is None:  # stopped early (tests): the last checkpoint is the result
        return latest_checkpoint(run.out)
    final = Checkpoint(run.out / "final")
    final.save(engine, run.tokenizer, state, source, run.rank, run.world)
    meter.close()
    run.say(f"final checkpoint: {final.path}")
    return final.path


def _setup(cfg: TrainConfig, console) -> Run:
    """Processes and device, the dtype in force, the tokenizer and shards (same vocabulary), the plan."""
    from harness.data import packing

    out = Path(cfg.out)
    rundir.check_writable(out)
    rank, world, device = distributed.setup()
    compute = precision.resolve(cfg.dtype, device)
    if cfg.from_scratch:
        tok_path = models.locate(cfg.tokenizer or "smollm2-135m", "--tokenizer")
    else:
        tok_path = models.resolve(cfg.base)
    if not cfg.from_scratch:
        models.read_config(tok_path, "--base")  # a damaged config named before anything else reads it
    tokenizer = models.read_tokenizer(tok_path, "--tokenizer" if cfg.from_scratch else "--base")
    data = shard_io.PackedShards(Path(cfg.data), cfg.seq_len)
    if data.vocab_hash != packing.vocab_hash(tokenizer):
        raise UserError(f"--data: the shards were tokenized with {data.manifest['tokenizer']['name']!r} "
                        f"(vocabulary {data.vocab_hash}), not the base's tokenizer ({packing.vocab_hash(tokenizer)}); "
                        f"rebuild them with --tokenizer {cfg.base or cfg.tokenizer or 'smollm2-135m'}")
    per_step, accum, steps = _plan(cfg, world)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, min(20, steps // 20))
    say = console.print if rank == 0 else (lambda *a, **k: None)
    return Run(cfg, out, rank, world, device, compute, tokenizer, data, per_step, accum, steps, warmup, say=say)


def _check_run_dir(run: Run, resume: bool) -> Path | None:
    """Refuse what cannot continue (another config; a plain rerun over checkpoints); return the
    final checkpoint of a finished run. Writes nothing."""
    # The dtype in force, not the request: `auto` resumed on a machine that picks another dtype is refused.
    run.hashed = {**run.cfg.hashed(), "dtype": run.compute.name}
    keyed = rundir.KeyedDir(run.out, "train_config.json", "a training run")
    if keyed.record_path.is_file():  # a run recorded before the key left out --out: compared as written
        written = rundir.read_json(keyed.record_path, "--out").get("config", {})
        if "out" in written:
            run.hashed["out"] = written["out"]
    run.digest = rundir.config_hash(run.hashed)
    old = keyed.existing(run.hashed)
    distributed.barrier(run.world)  # every rank looks before rank 0 writes, so all of them take the same branch
    if old is None:
        if resume:
            raise UserError(f"--resume: {str(run.out)!r} holds no training run to resume")
        return None
    final = Checkpoint(run.out / "final")
    rundir.recover(final.path)
    if final.complete():
        return final.path
    if not resume and Checkpoint.all(run.out):
        raise UserError(f"--out: {str(run.out)!r} already holds this run with checkpoints; add --resume to continue it")
    return None


def _open_run_dir(run: Run) -> None:
    """Record the config of a new run (rank 0), once the model has loaded."""
    keyed = rundir.KeyedDir(run.out, "train_config.json", "a training run")
    if run.rank == 0 and not keyed.record_path.is_file():
        keyed.write(run.hashed, precision=run.compute.record())
    distributed.barrier(run.world)


def _engine(run: Run, model):
    cfg = run.cfg
    common = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup=run.warmup, accum=run.accum, clip=cfg.clip,
                  dtype=run.compute.torch_dtype, device=run.device, world=run.world)
    if cfg.engine == "deepspeed":
        return DeepSpeedEngine(model, micro_batch=cfg.micro_batch, loss_chunk=cfg.loss_chunk,
                               config_path=Path(cfg.deepspeed_config) if cfg.deepspeed_config else None, **common)
    return TorchEngine(model, loss_chunk=cfg.loss_chunk, compile=cfg.compile, **common)


def _resume(run: Run, engine) -> tuple[int, int]:
    """(step, data position) of the newest checkpoint that loads, the engine and RNGs restored from
    it; a damaged one is named and the one before it tried. No checkpoint (a new run, or one killed
    before its first): step 0. Steps logged after the point resumed from are dropped (redone once)."""
    checkpoints = Checkpoint.all(run.out)
    damaged = []
    step, position = 0, 0
    for ckpt in checkpoints:
        try:
            state = ckpt.restore(engine)
        except UserError as exc:
            damaged.append(str(exc))
            run.say(f"warning: {exc}" + ("; trying the checkpoint before it" if ckpt is not checkpoints[-1] else ""))
            continue
        step, position = state["step"], state["position"]
        run.say(f"resuming {run.out} from {ckpt.path.name} (step {step}, {state['tokens']:,} tokens)")
        break
    else:
        if damaged:
            raise UserError(f"--resume: no checkpoint in {run.out} loads ({len(damaged)} damaged; the newest: "
                            f"{damaged[0]}); remove --out to start the run again")
        if (run.out / METRICS).exists():
            run.say(f"{run.out}: no checkpoint was written before the run stopped; starting it again")
    if run.rank == 0:
        rundir.JsonlLog(run.out / METRICS).keep(lambda r: r["step"] <= step)
    return step, position


class _Meter:
    """Per-step metrics: metrics.jsonl (durable, one line per step), TensorBoard and W&B when asked
    (harness.tracking), on rank 0."""

    def __init__(self, run: Run, engine):
        cfg = run.cfg
        self.run = run
        self.config = engine.model.config
        self.per_seq_flops = flops.train_flops(self.config, cfg.seq_len)
        # MFU against a named peak (per process, times the processes): declared, the GPU's data
        # sheet, or a GEMM measured here; with --doc-mask only attention within documents counts.
        peak, self.peak_source = flops.stated_peak(run.device, run.compute.torch_dtype, cfg.peak_tflops)
        self.peak = peak * run.world
        self.memory = PeakMemory(run.device)
        self.log = rundir.JsonlLog(run.out / METRICS)
        self.tracker = None
        if run.rank == 0:
            self.tracker = tracking.Tracker(run.out, name=run.out.name, config=run.hashed, job_type="train",
                                            wandb_project=cfg.wandb)

    def step_flops(self, doc_lens: list[list[int]]) -> float:
        """This process's model FLOPs for a micro-batch's rows."""
        if not self.run.cfg.doc_mask:
            return len(doc_lens) * self.per_seq_flops
        return sum(flops.train_flops_docs(self.config, lens) for lens in doc_lens)

    def record(self, step: int, loss: float, grad_norm: float, lr: float, seconds: float, counted: float) -> None:
        """``counted``: this process's model FLOPs in the step (every process does the same work)."""
        run = self.run
        record = {"step": step, "tokens": run.tokens_at(step), "loss": loss, "lr": lr, "grad_norm": grad_norm,
                  "tokens_per_s": run.per_step * run.cfg.seq_len / seconds,
                  "mfu": counted * run.world / seconds / self.peak, "flops": counted * run.world, "seconds": seconds,
                  "peak_gib": round(self.memory.gib(), 3)}
        if run.rank == 0:
            self.log.append(record)
            self.tracker.scalars({f"train/{key}": record[key] for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu")},
                                 step)

    def close(self) -> None:
        if self.tracker:
            self.tracker.close()


def _out_of_memory(run: Run, step: int, peak: float, last_good: Path | None):
    """End the run on a step that did not fit: one line with the step, its size, the peak and what
    to change; the last checkpoint stays the one --resume continues from."""
    cfg = run.cfg
    oom.free()
    fixes = ([f"a lower --micro-batch (now {cfg.micro_batch}; gradient accumulation keeps the batch size)"]
             if cfg.micro_batch > 1 else [])
    fixes += ["activation checkpointing (drop --no-grad-ckpt)"] if not cfg.grad_ckpt else []
    fixes += [f"a lower --seq-len (now {cfg.seq_len:,})"]
    kept = (f"the last checkpoint ({last_good.name}) is kept: rerun with --resume to continue from it" if last_good
            else f"no checkpoint was saved yet{'' if cfg.save_every else ' (--save-every N keeps one every N steps)'}: "
                 f"rerun to start again")
    raise StepOutOfMemory(f"out of memory in training step {step} of {run.steps} (sequence length {cfg.seq_len:,}, "
                          f"micro-batch {cfg.micro_batch}, peak {peak:.2f} GiB on {run.device}); to fit, try "
                          f"{', or '.join(fixes)}; {kept}")


def _loop(run: Run, engine, meter: _Meter, source: dict, step: int, position: int, console,
          stop_after: int | None) -> dict | None:
    """Optimizer steps from ``step`` to the plan's last; returns the final trainer state (None:
    stopped at ``stop_after``)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cfg = run.cfg
    columns = (TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f} tokens"),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    last_good = latest_checkpoint(run.out)
    # FlashAttention-2 in transformers masks per document from position_ids only in a batch of one:
    # a micro-batch of several packed rows goes as one row (exact: shards.one_row).
    one_row = cfg.doc_mask and cfg.micro_batch > 1 and engine.model.config._attn_implementation == "flash_attention_2"
    state = {"step": step, "position": position, "tokens": run.tokens_at(step), "config_hash": run.digest}
    with Progress(*columns, console=console, disable=run.rank != 0) as progress:
        task = progress.add_task("train", total=run.tokens_at(run.steps), completed=run.tokens_at(step), loss="-")
        while step < run.steps:
            started = time.perf_counter()
            meter.memory.reset()
            lr = engine.lr   # the rate this step's update uses (DeepSpeed steps its scheduler inside backward)
            losses, counted, fitted = [], 0.0, False
            try:
                for micro in range(run.accum):
                    batch = run.data.batch(position + micro * cfg.micro_batch * run.world, cfg.micro_batch, cfg.seed,
                                           run.rank, run.world)
                    counted += meter.step_flops(batch.doc_lens)
                    ids, labels = batch.input_ids, shard_io.labels(batch, cfg.doc_mask)
                    pos = shard_io.position_ids(batch.doc_lens) if cfg.doc_mask else None
                    if one_row:
                        ids, labels, pos = shard_io.one_row(ids, labels, pos)
                    oom.inject("step", step + 1)
                    losses.append(engine.backward(ids, labels, pos))
                grad_norm = engine.step()
                fitted = True
            except oom.Error:
                pass   # said below, outside this block: its traceback holds the step's activations
            if not fitted:
                _out_of_memory(run, step + 1, meter.memory.gib(), last_good)
            loss = distributed.mean(sum(losses) / len(losses), run.world)
            step, position = step + 1, position + run.per_step
            if not math.isfinite(loss):
                raise Diverged(f"loss became {loss} at step {step}; training stopped; last good checkpoint: "
                               f"{last_good or 'none (the base model is unchanged)'}")
            meter.record(step, loss, grad_norm, lr, time.perf_counter() - started, counted)
            progress.update(task, completed=run.tokens_at(step), loss=f"{loss:.4f}")
            state = {"step": step, "position": position, "tokens": run.tokens_at(step), "config_hash": run.digest}
            if cfg.save_every and step % cfg.save_every == 0 and step < run.steps:
                ckpt = Checkpoint.at_step(run.out, step)
                ckpt.save(engine, run.tokenizer, state, source, run.rank, run.world)
                last_good = ckpt.path
            if stop_after is not None and step >= stop_after:
                return None
    return state
