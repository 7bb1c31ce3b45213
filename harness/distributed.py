"""Processes started by a launcher (torchrun, deepspeed): who this process is, its device, and the few
collectives the harness needs. One place for it: the trainer and data-parallel evaluation share it.

torchrun and the deepspeed launcher both set RANK, WORLD_SIZE and LOCAL_RANK (the deepspeed launcher
also passes ``--local_rank``, which harness.cli takes out of the arguments into LOCAL_RANK).
"""

from __future__ import annotations

import contextlib
import os

import torch


def launched() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment; (0, 1, 0) without one."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def launch_env_kept():
    """The launcher's variables as they were, once the block ends. A run in this process may set them
    (DeepSpeed without a launcher: a group of one, LOCAL_RANK read by ZeRO) and must not hand them to
    processes started after it: lm_eval's CLI, through accelerate, took an inherited LOCAL_RANK for a
    launch and failed for want of MASTER_ADDR."""
    before = {key: os.environ.get(key) for key in LAUNCH_ENV}
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def setup(device: str | None = None) -> tuple[int, int, torch.device]:
    """(rank, world, this process's device), the process group joined when there are several ranks:
    NCCL on GPUs (one per local rank), gloo on CPUs."""
    rank, world, local = launched()
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local)
    else:
        dev = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def mean(value: float, world: int) -> float:
    """The mean of ``value`` over ranks; the tensor lives where the process group's backend reduces
    (NCCL: the rank's GPU; a CPU tensor through NCCL fails)."""
    if world == 1:
        return value
    nccl = torch.distributed.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item()) / world


def share(groups: list[tuple[object, float]], rank: int, world: int) -> list[object]:
    """This rank's groups, balanced by cost: the costliest group first, each to the least-loaded rank
    (ties to the lower rank); every rank computes the same assignment."""
    if world == 1:
        return [g for g, _ in groups]
    load = [0.0] * world
    mine = []
    for index in sorted(range(len(groups)), key=lambda i: (-groups[i][1], i)):
        target = min(range(world), key=lambda r: (load[r], r))
        load[target] += groups[index][1]
        if target == rank:
            mine.append(index)
    return [groups[i][0] for i in sorted(mine)]


def first(fn, rank: int, world: int):
    """``fn()`` on rank 0, its result (or its one-line UserError) sent to every rank, so that a refusal
    on rank 0 (a locked or foreign run directory) stops every rank with the same line instead of
    leaving the others waiting at the next collective."""
    from harness.errors import UserError

    if world == 1:
        return fn()
    box = [None]
    if rank == 0:
        try:
            box[0] = ("ok", fn())
        except UserError as exc:
            box[0] = ("error", str(exc))
    torch.distributed.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise UserError(value)
    return value
