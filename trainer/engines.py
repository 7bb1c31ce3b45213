"""Training engines behind one small interface: ``torch`` (one process, or DDP under torchrun)
and ``deepspeed`` (ZeRO stage from a JSON config; started with ``deepspeed`` or ``torchrun``).

    engine.backward(input_ids, labels, position_ids) -> loss   # one micro-batch
    engine.step() -> grad_norm                                 # once per global batch
    engine.save(dir) / engine.load(dir)                        # optimizer, scheduler, weights
    engine.full_state_dict() -> dict | None                    # HF weights, on rank 0

With flex_attention both engines pass the model a block mask built here from ``position_ids``
(:func:`document_block_mask`): one compilation per shape, whatever the documents' layout.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import nullcontext
from pathlib import Path

import torch

from harness.errors import UserError
from harness.trainer.lm_head_loss import ChunkedLossModel, causal_lm_loss, fuse_head

DEFAULT_DS_CONFIG = Path(__file__).with_name("ds_zero3.json")


def load_state(path: Path, map_location=None) -> dict:
    """A checkpoint's optimizer/scheduler/RNG file, unpickled with ``weights_only=True``: tensors,
    numbers, strings and containers only. A file that needs more (a crafted pickle that would run
    code, or a checkpoint written by an older version with numpy objects in it) is refused."""
    import pickle

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        why = "it holds objects other than tensors, numbers and containers: a crafted file, or an older version's"
    except (RuntimeError, EOFError, OSError) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    raise UserError(f"--resume: {path} cannot be loaded safely ({why}); resume from another checkpoint or "
                    f"start the run again")


def document_block_mask(position_ids: torch.Tensor, block: int = 128):
    """flex_attention's BlockMask for causal attention within documents, from tensors alone.

    A document starts wherever a row's positions do not go up by one (transformers' rule for packed
    rows: ``masking_utils.find_packed_sequence_indices``), so the mask is the one transformers builds
    from ``position_ids``. transformers builds it with ``create_block_mask(_compile=True)``: a compiled
    graph of its own per shape, and its ``mask_mod`` is another function (plain causal) when no row of
    the batch has a second document, which recompiles both that graph and flex_attention's kernel. Here
    the blocks come from each block's first and last document number (documents are contiguous, so
    that decides every block pair) and ``mask_mod`` is always the same function over a tensor: the
    only compilation is flex_attention's, once per (batch, length) shape."""
    from torch.nn.attention.flex_attention import BlockMask

    batch, length = position_ids.shape
    blocks = -(-length // block)
    pos = position_ids
    doc = (torch.diff(pos, dim=-1, prepend=pos[:, :1] - 1) != 1).cumsum(-1, dtype=torch.int32)
    starts = torch.arange(blocks, device=pos.device) * block
    first, last = doc[:, starts], doc[:, (starts + block - 1).clamp(max=length - 1)]     # (batch, blocks)
    q, kv = starts[:, None] // block, starts[None, :] // block
    whole = (starts + block <= length)
    # some key of block kv shares a document with some query of block q; every pair does
    touched = (kv <= q) & (last[:, None, :] >= first[:, :, None])
    full = (kv < q) & (first[:, None, :] == last[:, :, None]) & whole[:, None] & whole[None, :]
    padded = torch.nn.functional.pad(doc, (0, blocks * block - length), value=-1)   # a padded key: no real query's
    return BlockMask.from_kv_blocks(*_ordered(touched & ~full), *_ordered(full), BLOCK_SIZE=block,
                                    mask_mod=_within_documents(padded), seq_lengths=(length, length))


def _ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, indices) per query block of a (batch, q blocks, kv blocks) choice, as BlockMask holds
    them: one head, int32, the chosen kv blocks first and in order."""
    counts = blocks.sum(-1, dtype=torch.int32)
    indices = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts[:, None].contiguous(), indices[:, None].contiguous()


def _within_documents(doc: torch.Tensor):
    """The mask_mod: causal, within one document. Always this code over a tensor, whatever the layout,
    so dynamo's guards see the same function and a tensor of the same shape."""
    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (doc[b, q_idx] == doc[b, kv_idx])

    return mask_mod


def attention_mask(model, input_ids: torch.Tensor, position_ids: torch.Tensor | None):
    """What a training forward passes as ``attention_mask``: with flex_attention the block mask built
    here (per-document from ``position_ids``, causal over each row without them); otherwise None
    (transformers masks from ``position_ids``: sdpa's dense mask on CPU, FlashAttention-2's varlen)."""
    if getattr(model.config, "_attn_implementation", None) != "flex_attention":
        return None
    if position_ids is None:
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
    return document_block_mask(position_ids)


def _optimizer(model, lr: float, weight_decay: float, warmup: int):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)
    # Linear warm-up, then constant: the paper's schedule (constant 2e-5). Step k (1-based) updates at
    # lr * min(1, k / warmup): a warm-up of 1 (or 0) step is none, the first update at the full rate.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / max(1, warmup)))
    return opt, sched


class TorchEngine:
    name = "torch"

    def __init__(self, model, *, lr: float, weight_decay: float, warmup: int, accum: int, clip: float,
                 dtype: torch.dtype, device: torch.device, world: int, loss_chunk: int = 1024,
                 compile: bool = False):
        self.model = model.to(device)
        self.device, self.accum, self.clip = device, accum, clip
        self.autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext())
        # The loss in chunks of positions (trainer/lm_head_loss.py), unless loss_chunk is 0: then the
        # model's own forward(labels=...) computes it over the full logits.
        self.wrapped = ChunkedLossModel(self.model, loss_chunk) if loss_chunk else self.model
        if world > 1:
            self.wrapped = torch.nn.parallel.DistributedDataParallel(self.wrapped)
        if compile:  # inductor: fused kernels for norms, rotary, SiLU (C++/OpenMP on CPU, Triton on GPU)
            self.wrapped = torch.compile(self.wrapped)
        self.chunked = bool(loss_chunk)
        self.opt, self.sched = _optimizer(self.model, lr, weight_decay, warmup)

    def loss(self, input_ids, labels, position_ids) -> torch.Tensor:
        """One micro-batch's mean loss (the forward half of ``backward``)."""
        ids, labels = input_ids.to(self.device), labels.to(self.device)
        pos = None if position_ids is None else position_ids.to(self.device)
        mask = attention_mask(self.model, ids, pos)
        with self.autocast:
            if self.chunked:
                return self.wrapped(ids, labels, pos, mask)
            return self.wrapped(input_ids=ids, labels=labels, position_ids=pos, attention_mask=mask,
                                use_cache=False).loss

    def backward(self, input_ids, labels, position_ids) -> float:
        loss = self.loss(input_ids, labels, position_ids)
        (loss / self.accum).backward()
        return float(loss.detach())

    def step(self) -> float:
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip))
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return norm

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def save(self, path: Path, rank: int) -> None:
        if rank == 0:
            torch.save({"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()}, path / "optimizer.pt")

    def load(self, path: Path) -> None:
        from safetensors.torch import load_file

        from safetensors import SafetensorError

        weights = {}
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise UserError(f"--resume: {path} holds no weights (*.safetensors)")
        for f in files:
            try:
                weights.update(load_file(str(f)))
            except (SafetensorError, OSError) as exc:
                raise UserError(f"--resume: {f} is damaged ({str(exc).splitlines()[0] if str(exc) else exc!r})") from None
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:
            raise UserError(f"--resume: {path} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        if self.model.config.tie_word_embeddings:
            self.model.tie_weights()
        state = load_state(path / "optimizer.pt", map_location=self.device)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])

    def full_state_dict(self, rank: int) -> dict | None:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()} if rank == 0 else None


def _process_group(deepspeed, device: torch.device) -> None:
    """DeepSpeed's process group: the launcher's, else a group of one on an in-process store.
    Without a launcher DeepSpeed would look for MPI (mpi4py) when RANK and WORLD_SIZE are not set,
    and a TCP store on a port picked free beforehand can lose it to another process before it
    listens (two such trainings at once: EADDRINUSE). The variables are set for every run, the group
    made once: a run restores them when it ends (distributed.launch_env_kept), and ZeRO reads
    LOCAL_RANK again in the next run of the same process."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
    if not dist.is_initialized():
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


class DeepSpeedEngine:
    """ZeRO partitions parameters and gathers each inside its module's call. The chunked loss runs
    inside the LM head's call (lm_head_loss.fuse_head), so ZeRO-3 gathers the head's weight for it
    as for any layer: no [tokens, vocabulary] logits in fp32 (30-40 GB at 80K with a 32K vocabulary)."""

    name = "deepspeed"

    def __init__(self, model, *, lr: float, weight_decay: float, warmup: int, accum: int, clip: float,
                 dtype: torch.dtype, device: torch.device, world: int, micro_batch: int, config_path: Path | None,
                 loss_chunk: int = 1024):
        try:
            import deepspeed
        except ImportError:
            raise UserError("--engine deepspeed: DeepSpeed is not installed; "
                            "pip install 'longctx-harness[gpu]' (or DS_BUILD_OPS=0 pip install deepspeed==0.19.8)") from None
        if device.type == "cpu":
            # Plain gloo collectives: DeepSpeed would otherwise JIT-compile its shared-memory allreduce
            # on first use (about 50 s on 2 cores), which a CPU run of a few processes does not need.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        config = load_ds_config(config_path)
        config["train_micro_batch_size_per_gpu"] = micro_batch
        config["gradient_accumulation_steps"] = accum
        config["gradient_clipping"] = clip
        config.setdefault("bf16", {})["enabled"] = dtype == torch.bfloat16
        config.setdefault("fp16", {})["enabled"] = False
        config["steps_per_print"] = 10 ** 9
        _process_group(deepspeed, device)
        opt, sched = _optimizer(model, lr, weight_decay, warmup)
        self.chunk = loss_chunk
        if loss_chunk:  # the engine calls model(ids, labels, pos) -> loss; the HF weights and keys are unchanged
            fuse_head(model)
            model.forward = lambda input_ids, labels, position_ids=None, attention_mask=None: causal_lm_loss(
                model, input_ids, labels, position_ids, loss_chunk, attention_mask)
        self.engine, self.opt, _, self.sched = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                                                    config=config)
        self.model, self.device, self.config = self.engine.module, self.engine.device, config
        self._norm = 0.0

    def backward(self, input_ids, labels, position_ids) -> float:
        ids, labels = input_ids.to(self.device), labels.to(self.device)
        pos = None if position_ids is None else position_ids.to(self.device)
        mask = attention_mask(self.model, ids, pos)
        if self.chunk:
            loss = self.engine(ids, labels, pos, mask)
        else:
            loss = self.engine(input_ids=ids, labels=labels, position_ids=pos, attention_mask=mask, use_cache=False).loss
        self.engine.backward(loss)
        self.engine.step()  # DeepSpeed accumulates; it updates only at the accumulation boundary
        return float(loss.detach())

    def step(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None and math.isfinite(float(norm)) else float("nan")

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def save(self, path: Path, rank: int) -> None:
        self.engine.save_checkpoint(str(path / "deepspeed"), tag="state")  # collective: every rank writes

    def load(self, path: Path) -> None:
        """DeepSpeed's own state, read by DeepSpeed. A damaged or missing file is a UserError naming
        it (the loop then tries the checkpoint before): DeepSpeed raises torch's bare reader error
        for a damaged file and only warns, loading nothing, for a missing directory."""
        import pickle

        where = path / "deepspeed"
        if not sorted((where / "state").glob("*.pt")):
            raise UserError(f"--resume: {where / 'state'} holds no DeepSpeed state (*.pt)")
        reader = getattr(self.engine, "checkpoint_engine", None)
        reading = [where / "state"]
        if reader is not None:  # note each file as DeepSpeed opens it, to name the damaged one
            read = reader.load

            def load(file, *args, **kwargs):
                reading[0] = Path(file)
                return read(file, *args, **kwargs)

            reader.load = load
        try:
            loaded, _ = self.engine.load_checkpoint(str(where), tag="state")
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError) as exc:
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise UserError(f"--resume: {reading[0]} cannot be loaded ({why})") from None
        finally:
            if reader is not None:
                del reader.load
        if loaded is None:
            raise UserError(f"--resume: {where} holds no DeepSpeed checkpoint that loads (tag 'state')")

    def full_state_dict(self, rank: int) -> dict | None:
        if self.config.get("zero_optimization", {}).get("stage", 0) == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()  # collective; full dict on rank 0
        else:
            state = self.engine.module.state_dict()
        return {k: v.detach().cpu() for k, v in state.items()} if rank == 0 and state is not None else None


def load_ds_config(path: Path | None) -> dict:
    path = Path(path) if path else DEFAULT_DS_CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--deepspeed-config: {str(path)!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--deepspeed-config: {str(path)!r} is not valid JSON ({exc})") from None
    zero = config.get("zero_optimization") if isinstance(config, dict) else None
    stage = zero.get("stage") if isinstance(zero, dict) else None
    if stage not in (0, 1, 2, 3):
        raise UserError(f"--deepspeed-config: {str(path)!r} needs zero_optimization.stage in 0-3")
    return config
