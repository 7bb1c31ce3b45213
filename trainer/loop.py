"""Continual pretraining: RoPE extension on packed mixtures. Reads top to bottom.

    setup (distributed, device) -> tokenizer + shards (same vocabulary) -> model (RoPE raised,
    max positions set) -> engine (torch | deepspeed) -> [resume] -> steps -> checkpoints -> final

Defaults follow the paper: AdamW at a constant 2e-5 after a short linear warm-up, bf16 autocast
where the device computes bf16 natively (fp32 elsewhere: harness.precision), gradient
checkpointing, gradient accumulation up to the batch size in tokens, cross-document attention
over packed sequences (``doc_mask`` masks per document).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from harness import flops, models, precision, rundir
from harness.errors import UserError
from harness.data import shards as shard_io
from harness.trainer.engines import DeepSpeedEngine, TorchEngine, load_ds_config

ENGINES = ("torch", "deepspeed")
PAPER_BATCH_TOKENS = 4 * 1024 * 1024


class Diverged(UserError):
    """The loss became NaN or inf: the run stops and keeps its last good checkpoint."""

    exit_code = 1


@dataclass
class TrainConfig:
    base: str
    data: str
    seq_len: int
    tokens: int
    out: str
    rope_theta: float | None = None
    rope_scaling: tuple[str, float] | None = None
    lr: float = 2e-5
    batch_tokens: int | None = None   # None: the paper's 4M, capped so the run takes >= 10 steps
    micro_batch: int = 1
    warmup_steps: int | None = None   # None: 5% of the steps, at most 20
    weight_decay: float = 0.0
    clip: float = 1.0
    engine: str = "torch"
    deepspeed_config: str | None = None
    doc_mask: bool = False
    grad_ckpt: bool = True
    loss_chunk: int = 1024            # positions per chunk of the LM-head loss; 0: transformers' loss
    compile: bool = False             # torch.compile the model (torch engine; first step compiles)
    peak_tflops: float | None = None  # declared peak per process for MFU; None: measure a GEMM
    dtype: str = "auto"               # autocast: auto (bf16 where native, else fp32), bf16, fp32, fp16
    save_every: int = 0               # 0: only the final checkpoint
    seed: int = 0
    from_scratch: str | None = None   # "tiny": a small Llama built here instead of loading --base

    def hashed(self) -> dict:
        """What determines the run's numbers (the resume check compares this)."""
        d = asdict(self)
        d.pop("save_every")
        d.pop("peak_tflops")
        d["rope_scaling"] = list(self.rope_scaling) if self.rope_scaling else None
        return d


def _distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _mean(value: float, world: int) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t) / world


def tiny_config(tokenizer, seq_len: int):
    """The from-scratch base: a 4-layer Llama (about 20M parameters with SmolLM2's 49K vocabulary)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max(2048, seq_len),
                       rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)


def _load_model(cfg: TrainConfig, tokenizer, device: torch.device):
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

    attn = models.attn_implementation(device)
    if cfg.from_scratch:
        config = tiny_config(tokenizer, cfg.seq_len)
        config._attn_implementation = attn
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
        name = f"tiny-llama-{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M"
    else:
        path = models.resolve(cfg.base)
        config = AutoConfig.from_pretrained(path)
        models.apply_rope(config, cfg.rope_theta, cfg.rope_scaling)
        # The model is trained at seq_len: that is now its max positions (the scaling, if any,
        # keeps the original length it is relative to in rope_parameters).
        config.max_position_embeddings = max(int(config.max_position_embeddings), cfg.seq_len)
        model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch.float32, attn_implementation=attn)
        name = models.display_name(path)
    if cfg.grad_ckpt:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
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


def latest_checkpoint(out: Path) -> Path | None:
    rundir.recover(out / "final")
    ckpts = sorted((out / "checkpoints").glob("step-*")) if (out / "checkpoints").is_dir() else []
    return ckpts[-1] if ckpts else None


def _save(engine, tokenizer, dest: Path, state: dict, rank: int, world: int, source: dict) -> None:
    """A complete HF checkpoint plus trainer state, published by renaming a finished temp dir."""
    tmp = dest.with_name(f".{dest.name}.shared")  # every rank writes its engine shards here
    try:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier(world)
        engine.save(tmp, rank)
        weights = engine.full_state_dict(rank)
        _barrier(world)
        if rank == 0:
            with rundir.publishing(dest) as new:
                os.rmdir(new)
                os.rename(tmp, new)
                engine.model.save_pretrained(new, state_dict=weights, safe_serialization=True)
                tokenizer.save_pretrained(new)
                (new / "trainer_state.json").write_text(json.dumps(state, indent=2))
                (new / "SOURCE.json").write_text(json.dumps(source, indent=2))
                torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                            "python": random.getstate()}, new / "rng.pt")
        _barrier(world)
    except OSError as exc:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"checkpoint {dest.name} could not be written ({exc.strerror or exc}); "
                        f"earlier checkpoints are intact") from None


def train(cfg: TrainConfig, *, resume: bool = False, console=None, stop_after: int | None = None) -> Path:
    """Run (or resume) continual pretraining; returns the final checkpoint's directory."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from transformers import AutoTokenizer

    out = Path(cfg.out)
    if cfg.engine not in ENGINES:
        raise UserError(f"--engine: unknown {cfg.engine!r}; known: {', '.join(ENGINES)}")
    if cfg.engine == "deepspeed":
        load_ds_config(Path(cfg.deepspeed_config) if cfg.deepspeed_config else None)  # fail fast
    if cfg.seq_len < 1 or cfg.tokens < 1:
        raise UserError("--seq-len and --tokens must be positive")
    precision.check(cfg.dtype)
    rundir.check_writable(out)
    rank, world, device = _distributed()
    compute = precision.resolve(cfg.dtype, device)
    console = console or Console(stderr=True)
    say = console.print if rank == 0 else (lambda *a, **k: None)

    # -- tokenizer and data: the shards must come from the base's tokenizer ----------------------
    from harness.data import packing

    tok_path = models.resolve("smollm2-135m") if cfg.from_scratch else models.resolve(cfg.base)
    tokenizer = AutoTokenizer.from_pretrained(tok_path)
    data = shard_io.PackedShards(Path(cfg.data), cfg.seq_len)
    if data.vocab_hash != packing.vocab_hash(tokenizer):
        raise UserError(f"--data: the shards were tokenized with {data.manifest['tokenizer']['name']!r} "
                        f"(vocabulary {data.vocab_hash}), not the base's tokenizer ({packing.vocab_hash(tokenizer)}); "
                        f"rebuild them with --tokenizer {cfg.base}")
    per_step, accum, steps = _plan(cfg, world)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, min(20, steps // 20))

    # -- the run directory: a new run, or a resume of the same config ---------------------------
    # The dtype in force, not the request: `auto` resumed on a machine that picks another dtype is refused.
    hashed = {**cfg.hashed(), "dtype": compute.name}
    digest = rundir.config_hash(hashed)
    keyed = rundir.KeyedDir(out, "train_config.json", "a training run")
    old = keyed.existing(hashed)
    _barrier(world)  # every rank looks before rank 0 writes, so all of them take the same branch
    if old is not None:
        if not resume:
            raise UserError(f"--out: {str(out)!r} already holds this run; add --resume to continue it")
    elif resume:
        raise UserError(f"--resume: {str(out)!r} holds no training run to resume")
    elif rank == 0:
        keyed.write(hashed, precision=compute.record())
    _barrier(world)

    # -- model and engine ------------------------------------------------------------------------
    model, base_name = _load_model(cfg, tokenizer, device)
    dtype = compute.torch_dtype
    common = dict(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup=warmup, accum=accum, clip=cfg.clip,
                  dtype=dtype, device=device, world=world)
    if cfg.engine == "deepspeed":
        engine = DeepSpeedEngine(model, micro_batch=cfg.micro_batch,
                                 config_path=Path(cfg.deepspeed_config) if cfg.deepspeed_config else None, **common)
    else:
        engine = TorchEngine(model, loss_chunk=cfg.loss_chunk, compile=cfg.compile, **common)

    metrics = rundir.JsonlLog(out / "metrics.jsonl")
    step, position = 0, 0
    if resume:
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            raise UserError(f"--resume: {str(out)!r} has no checkpoint yet (use --save-every N)")
        state = json.loads((ckpt / "trainer_state.json").read_text())
        engine.load(ckpt)
        rng = torch.load(ckpt / "rng.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        step, position = state["step"], state["position"]
        if rank == 0:  # steps logged after this checkpoint are redone: drop them so none is doubled
            metrics.keep(lambda r: r["step"] <= step)
        say(f"resuming {out} from {ckpt.name} (step {step}, {state['tokens']:,} tokens)")

    # -- metrics ---------------------------------------------------------------------------------
    per_seq_flops = flops.train_flops(engine.model.config, cfg.seq_len)
    if cfg.peak_tflops:
        peak = cfg.peak_tflops * 1e12 * world
    else:
        peak = flops.measure_peak(device.type if device.type == "cpu" else str(device), dtype) * world
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
    source = {"name": f"{base_name}-{out.name}", "base": cfg.base if not cfg.from_scratch else cfg.from_scratch,
              "data": str(cfg.data), "tokens": cfg.tokens, "seq_len": cfg.seq_len}
    rope = engine.model.config.rope_parameters
    say(f"train {source['name']}: {steps} steps x {per_step} sequences x {cfg.seq_len} = "
        f"{steps * per_step * cfg.seq_len:,} tokens ({accum} micro-steps of {cfg.micro_batch} on {world} "
        f"{device.type} process{'es' if world > 1 else ''}, engine {engine.name}); lr {cfg.lr:g}, warm-up {warmup}; "
        f"RoPE {rope}; doc mask {'on' if cfg.doc_mask else 'off'}; {compute.name} ({compute.reason}), "
        f"peak {peak / 1e12:.2f} TFLOP/s")

    columns = (TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f} tokens"),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    progress = Progress(*columns, console=console, disable=rank != 0)
    last_good = latest_checkpoint(out)
    state = {"step": step, "position": position, "tokens": step * per_step * cfg.seq_len, "config_hash": digest}
    with progress:
        task = progress.add_task("train", total=steps * per_step * cfg.seq_len,
                                 completed=step * per_step * cfg.seq_len, loss="-")
        while step < steps:
            started = time.perf_counter()
            losses = []
            for micro in range(accum):
                batch = data.batch(position + micro * cfg.micro_batch * world, cfg.micro_batch, cfg.seed, rank, world)
                pos = shard_io.position_ids(batch.doc_lens) if cfg.doc_mask else None
                losses.append(engine.backward(batch.input_ids, shard_io.labels(batch, cfg.doc_mask), pos))
            grad_norm = engine.step()
            loss = _mean(sum(losses) / len(losses), world)
            step += 1
            position += per_step
            seconds = time.perf_counter() - started
            if not math.isfinite(loss):
                raise Diverged(f"loss became {loss} at step {step}; training stopped; last good checkpoint: "
                               f"{last_good or 'none (the base model is unchanged)'}")
            tokens = step * per_step * cfg.seq_len
            record = {"step": step, "tokens": tokens, "loss": loss, "lr": engine.lr, "grad_norm": grad_norm,
                      "tokens_per_s": per_step * cfg.seq_len / seconds,
                      "mfu": per_step * per_seq_flops / seconds / peak, "seconds": seconds}
            if rank == 0:
                metrics.append(record)
                for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
                    writer.add_scalar(f"train/{key}", record[key], step)
            progress.update(task, completed=tokens, loss=f"{loss:.4f}")
            state = {"step": step, "position": position, "tokens": tokens, "config_hash": digest}
            if cfg.save_every and step % cfg.save_every == 0 and step < steps:
                last_good = out / "checkpoints" / f"step-{step:06d}"
                _save(engine, tokenizer, last_good, state, rank, world, source)
            if stop_after is not None and step >= stop_after:
                return last_good
    final = out / "final"
    _save(engine, tokenizer, final, state, rank, world, source)
    if writer:
        writer.close()
    say(f"final checkpoint: {final}")
    return final
