"""What a training run is: :class:`TrainConfig`, declared once (harness.config). `harness train`'s
flags, the flags a launcher's processes get (``argv``) and the checks every caller goes through
(the CLI, ``harness ablate``, Python) all come from it. Light on purpose: no torch, so the command
line is built without loading one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import config
from harness.config import setting
from harness.errors import UserError
from harness.values import MIN_SEQ_LEN, check_seed, parse_budget, parse_length

ENGINES = ("torch", "deepspeed")
# From scratch a run has defaults sized for a CPU in minutes (batch: 8 sequences); a continued base
# needs --seq-len and --tokens.
SCRATCH_DEFAULTS = dict(seq_len=512, tokens=300_000, lr=1e-3)


def check_engine(name: str) -> None:
    if name not in ENGINES:
        raise UserError(f"--engine: unknown {name!r}; known: {', '.join(ENGINES)}")


def _rope_scaling(text: str, flag: str):
    from harness import models

    return models.parse_rope_scaling(text)


def _rope_scaling_text(value) -> str:
    return f"{value[0]}:{value[1]}"


@dataclass(kw_only=True)
class TrainConfig:
    base: str = setting("", "The model to continue pretraining.", metavar="PATH|ORG/NAME|smollm2-135m",
                        cli_default=None)
    from_scratch: str | None = setting(None, "Pretrain a Llama of this shape from random weights instead of loading "
                                       "--base: tiny (CPU), 1b, 7b, 13b, 8b, smollm2-135m (harness.shapes).",
                                       metavar="SHAPE")
    tokenizer: str | None = setting(None, "--from-scratch: the tokenizer (default smollm2-135m); a directory with "
                                    "tokenizer files is enough.", metavar="PATH|ORG/NAME|smollm2-135m")
    data: str = setting(help="Shards from `harness data build` (from-scratch: built if omitted).", cli_default=None)
    seq_len: int = setting(help="Training length in tokens, e.g. 8k (from-scratch default 512).", parse=parse_length,
                           cli_default=None)
    tokens: int = setting(help="Token budget, e.g. 50k, 5M, 1B (from-scratch default 300k).", parse=parse_budget,
                          cli_default=None)
    rope_theta: float | None = setting(None, "Raise the RoPE base before training (the paper's method), e.g. 5e5.",
                                       kind=float)
    rope_scaling: tuple[str, float] | None = setting(None, "Or scale RoPE: linear|dynamic|yarn with a factor > 1.",
                                                     metavar="TYPE:FACTOR", parse=_rope_scaling,
                                                     to_text=_rope_scaling_text)
    lr: float = setting(2e-5, "Constant learning rate after warm-up (default 2e-5; from-scratch 1e-3).",
                        cli_default=None)
    batch_tokens: int | None = setting(None, "Tokens per optimizer step (default: the paper's 4M, capped at "
                                       "tokens/10; from-scratch: 8 sequences).", parse=parse_budget, kind=int)
    micro_batch: int = setting(1, "Sequences per forward pass per process.")
    warmup_steps: int | None = setting(None, "Linear warm-up steps (default 5% of steps, at most 20).", kind=int)
    weight_decay: float = setting(0.0, "AdamW weight decay.", flag=None)
    clip: float = setting(1.0, "Gradient-norm bound.", flag=None)
    engine: str = setting("torch", "torch (plain/DDP) or deepspeed.")
    deepspeed_config: str | None = setting(None, "DeepSpeed JSON (default: trainer/ds_zero3.json, ZeRO-3).")
    doc_mask: bool = setting(False, "Mask attention per document (default: cross-document, as the paper).")
    attn: str = setting("auto", "Attention kernel: auto (flash_attention_2 on CUDA with flash-attn; without it "
                        "flex_attention when --doc-mask, else sdpa), sdpa, flash_attention_2, flex_attention or eager.")
    grad_ckpt: bool = setting(True, "Gradient (activation) checkpointing.", negatable=True)
    loss_chunk: int = setting(1024, "Positions per chunk of the LM-head loss; 0: transformers' loss.", flag=None)
    compile: bool = setting(False, "torch.compile the model (torch engine): faster steps after a slow first one.")
    dtype: str = setting("auto", "Autocast dtype: auto (bf16 where the device computes it natively, else fp32), "
                         "bf16, fp32 or fp16.")
    save_every: int = setting(0, "Checkpoint every N steps (0: final only).")
    peak_tflops: float | None = setting(None, "Declared peak TFLOP/s per process for MFU (default: measured).",
                                        kind=float)
    seed: int = setting(0, "Seed of the data order and the initial weights.")
    wandb: str | None = setting(None, "Log per-step metrics to this W&B project too (TensorBoard event files are "
                                "always written: OUT/tensorboard).", metavar="PROJECT")
    out: str = setting(help="The run directory.", metavar="DIRECTORY")

    def __post_init__(self):
        """Every value checked once, here: the CLI, ablate and Python callers all construct one."""
        from harness import models, precision, shapes, tracking

        check_engine(self.engine)
        if self.engine == "deepspeed":
            from harness.trainer.engines import load_ds_config

            load_ds_config(Path(self.deepspeed_config) if self.deepspeed_config else None)
        if self.seq_len < MIN_SEQ_LEN or self.tokens < 1:
            raise UserError(f"--seq-len {self.seq_len} / --tokens {self.tokens}: a training sequence needs at least "
                            f"{MIN_SEQ_LEN} tokens (the paper trains at 80k) and the budget must be positive")
        _check_numbers(self)
        precision.check(self.dtype)
        tracking.check_wandb(self.wandb)
        if self.attn not in models.ATTENTION:
            raise UserError(f"--attn: {self.attn!r} is not known; accepted: {', '.join(models.ATTENTION)}")
        models.check_rope_theta(self.rope_theta)
        if self.from_scratch is not None:
            self.from_scratch = shapes.canonical(self.from_scratch, "--from-scratch")
        elif self.tokenizer is not None:
            raise UserError("--tokenizer: only with --from-scratch (a --base brings its own tokenizer)")
        if self.rope_scaling and self.rope_scaling[0] == models.FROZEN_DYNAMIC:
            raise UserError("--rope-scaling frozen_dynamic: evaluation only (the paper's reset_rope); "
                            "train with --rope-theta or linear|dynamic|yarn")

    @classmethod
    def from_flags(cls, **flags) -> "TrainConfig":
        """A config from `harness train`'s values (None: not given): exactly one of base and
        from_scratch; from scratch the CPU-sized defaults fill what is missing, and ``data`` may be
        left empty (the CLI builds it); a continued base needs seq_len, tokens and data."""
        given = {k: v for k, v in flags.items() if v is not None}
        scratch = given.get("from_scratch")
        if bool(given.get("base")) == bool(scratch):
            raise UserError("train: give exactly one of --base PATH|smollm2-135m or --from-scratch SHAPE (e.g. tiny)")
        if scratch:
            given = {**SCRATCH_DEFAULTS, "data": "", **given}
            given.setdefault("batch_tokens", 8 * given["seq_len"])
        elif "seq_len" not in given or "tokens" not in given:
            raise UserError("train --base: --seq-len and --tokens are required (e.g. --seq-len 8k --tokens 50M)")
        elif "data" not in given:
            raise UserError("--data: required with --base (shards from `harness data build`)")
        return cls(**given)

    def argv(self) -> list[str]:
        """The `harness train` flags that make this config, for a launcher's processes (`harness
        ablate --launcher`); the CLI rebuilds the same config from them (tested by its hash)."""
        out = []
        for s in config.settings(TrainConfig):
            value = getattr(self, s.name)
            if s.flag is None:   # no flag: only its default travels
                if value != s.default:
                    raise ValueError(f"TrainConfig.{s.name}={value!r} has no `harness train` flag")
            elif s.kind is bool:
                out += [f"--no-{s.flag[2:]}"] if s.negatable and not value else [s.flag] if value and not s.negatable else []
            elif value not in (None, ""):
                out += [s.flag, s.to_text(value) if s.to_text else repr(value) if isinstance(value, float) else str(value)]
        return out

    def hashed(self) -> dict:
        """What determines the run's numbers (the resume check compares this): not where the run
        directory is, so a moved one resumes."""
        d = asdict(self)
        for name in ("out", "save_every", "peak_tflops", "wandb"):
            d.pop(name)
        if self.attn == "auto":   # the default keeps the identity runs had before --attn existed
            d.pop("attn")
        if self.tokenizer is None:  # likewise before --tokenizer
            d.pop("tokenizer")
        d["rope_scaling"] = list(self.rope_scaling) if self.rope_scaling else None
        return d


def _check_numbers(cfg: TrainConfig) -> None:
    """Finite numbers in range, before anything is created (an inf LR or a zero micro-batch used to
    fail mid-setup with a traceback, a negative seed in numpy, a 1-token sequence never)."""
    def bad(flag: str, value, accepted: str) -> UserError:
        return UserError(f"{flag}: {value!r} is not accepted; {accepted}")

    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise bad("--lr", cfg.lr, "give a finite learning rate above 0 (e.g. 2e-5)")
    if cfg.micro_batch < 1:
        raise bad("--micro-batch", cfg.micro_batch, "give 1 or more sequences per micro-step")
    if cfg.batch_tokens is not None and cfg.batch_tokens < cfg.seq_len:
        raise bad("--batch-tokens", cfg.batch_tokens, f"give at least one sequence ({cfg.seq_len} tokens)")
    check_seed(cfg.seed)
    if cfg.warmup_steps is not None and cfg.warmup_steps < 0:
        raise bad("--warmup-steps", cfg.warmup_steps, "give 0 or more steps")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise bad("--weight-decay", cfg.weight_decay, "give a finite value of 0 or more")
    if not (math.isfinite(cfg.clip) and cfg.clip > 0):
        raise bad("--clip", cfg.clip, "give a finite gradient-norm bound above 0")
    if cfg.save_every < 0:
        raise bad("--save-every", cfg.save_every, "give 0 (final only) or a number of steps")
    if cfg.loss_chunk < 0:
        raise bad("loss_chunk", cfg.loss_chunk, "give 0 (off) or more tokens")
    if cfg.peak_tflops is not None and not (math.isfinite(cfg.peak_tflops) and cfg.peak_tflops > 0):
        raise bad("--peak-tflops", cfg.peak_tflops, "give a finite TFLOP/s above 0")
