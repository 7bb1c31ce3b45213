"""The suite runner: schedule a suite's unfinished cells, evaluate them, append to the store."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from harness import distributed, estimate
from harness.store import OOM_RETRY, RunStore, is_oom, oom_summary
from harness.tasks.base import Suite


def run_suite(suite: Suite, backend, store: RunStore, console: Console, loaded, rank: int = 0, world: int = 1) -> int:
    """Evaluate every cell of ``suite`` not yet in ``store``; returns how many this process ran.

    Before the grid: its cost in FLOPs as the backend computes them (estimate.cell_flops) and in
    minutes, at the rate remembered for this machine. Progress and the ETA are weighted by each
    cell's FLOPs (a 128K cell costs far more than a 1K one), with the estimate standing in until
    cells have finished; the run's measured rate is remembered for the next estimate.

    Data-parallel (``world`` > 1, under torchrun): the unfinished cells are shared out by length,
    whole lengths per rank (a length's depths share their haystack prefix, so the prefix tree's reuse
    within a length survives; reuse across lengths does only where they land on one rank), balanced
    by FLOPs; rank 0 appends to the store, the others to their rank logs, which
    rank 0 merges once every rank has finished (each cell once, also after a crash).
    """
    suite.run_dir = store.path
    try:
        return _run_share(suite, backend, store, console, loaded, rank, world)
    finally:
        distributed.barrier(world)
        if rank == 0 and world > 1:
            store.merge_ranks()


def _run_share(suite: Suite, backend, store: RunStore, console: Console, loaded, rank: int, world: int) -> int:
    cells = suite.cells()
    done = store.done(suite.name)
    todo = [c for c in cells if c.key not in done]
    new = suite.new_tokens
    local = getattr(backend, "local", True)   # a served model's compute is not this machine's
    shares = getattr(backend, "shares_prefixes", False)

    def cost_of(part: list) -> list[float]:
        return estimate.cell_flops(suite, part, loaded.config, shares) if local \
            else [float(c.length + new) for c in part]   # remote: progress by tokens, no FLOP estimate

    already = len(cells) - len(todo)
    if world > 1:
        by_length = [[c for c in todo if c.length == n] for n in dict.fromkeys(c.length for c in todo)]
        todo = [c for g in distributed.share([(g, sum(cost_of(g))) for g in by_length], rank, world) for c in g]
    costs = cost_of(todo)
    total = sum(costs)
    key = estimate.key(loaded.info, getattr(backend, "name", "hf"), suite.name)
    mine = f" (rank {rank} of {world}: {len(todo)})" if world > 1 else ""
    head = (f"[bold]{suite.name}[/]: {len(cells)} cells, {len(cells) - already} to run"
            f"{mine}{f' ({already} already done)' if already else ''}; "
            f"{sum(c.length for c in todo):,} prompt tokens + up to {len(todo) * new:,} generated")
    if not todo:
        console.print(head)
        return 0
    append = store.append if rank == 0 else store.rank_log(rank).append
    rate, source = estimate.rate(key, loaded.info.get("device", "cpu"), loaded.info["precision"]["dtype"]) \
        if total > 0 and local else (1.0, "")
    planned = total / rate if local else 0.0
    console.print(f"{head}; {estimate.flop_text(total)} (prefix tree counted): about {estimate.minutes(planned)} "
                  f"({source})" if total > 0 and local else head)
    seconds, missed = _evaluate(suite, backend, todo, costs, planned, append, console)
    if total > 0 and local:
        if not missed:   # cells that ran out of memory did not do their FLOPs: no rate to learn
            estimate.remember(key, total, seconds)
        console.print(f"{suite.name}: {len(todo)} cells in {estimate.minutes(seconds)} (estimated "
                      f"{estimate.minutes(planned)})")
    if missed:
        console.print(f"[yellow]{oom_summary(missed, suite.name)}; {OOM_RETRY}[/]", highlight=False)
    return len(todo)


def _evaluate(suite: Suite, backend, todo: list, costs: list[float], planned: float, append,
              console: Console) -> tuple[float, list[dict]]:
    """Run ``todo`` through the suite on the backend, appending each result as it comes, with
    progress weighted by ``costs``. Returns the seconds taken and the results that ran out of memory."""
    total = sum(costs)
    # A live bar only draws on a terminal; a log (CI, a batch job, `> run.log`) gets one line per cell.
    live = console.is_terminal
    columns = (TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), TextColumn("{task.fields[cells]}"),
               TextColumn("last {task.fields[last]}"), TimeElapsedColumn(), _Eta(planned))
    started = time.perf_counter()
    with Progress(*columns, console=console, transient=False, disable=not live) as progress:
        task = progress.add_task(suite.name, total=max(total, 1.0), last="-", cells=f"0/{len(todo)}")
        cost = {c.key: f for c, f in zip(todo, costs)}
        finished, missed = 0.0, []
        for i, (cell, result) in enumerate(suite.run(todo, backend), 1):  # in the backend's order
            append(result)
            if is_oom(result):
                missed.append(result)
            finished += cost[cell.key]
            progress.update(task, advance=cost[cell.key], cells=f"{i}/{len(todo)}", last=_score(result))
            if not live:
                elapsed = time.perf_counter() - started
                left = remaining(planned, elapsed, finished, total)
                console.print(f"  [{i}/{len(todo)}] {cell.key} → {_score(result)}  ({_seconds(result)}"
                              f"{elapsed:,.0f} s elapsed, ETA {estimate.minutes(left)})", highlight=False)
    return time.perf_counter() - started, missed


def remaining(planned: float, elapsed: float, done: float, total: float) -> float:
    """Seconds left: the estimate's share until a tenth of the work is done, then the measured pace
    (from the first finished cell where there is no estimate: ``planned`` 0)."""
    if total <= 0 or (planned <= 0 and done <= 0):
        return 0.0
    if done < 0.1 * total and planned > 0:
        return max(planned - elapsed, planned * (1 - done / total) * 0.5)
    return elapsed / done * (total - done)


class _Eta(ProgressColumn):
    """ETA from the first second: the estimate stands in until cells have finished (rich's own
    column shows nothing until it has seen progress)."""

    def __init__(self, planned: float):
        super().__init__()
        self.planned = planned

    def render(self, task) -> Text:
        left = remaining(self.planned, task.elapsed or 0.0, task.completed, task.total or 0.0)
        return Text(f"ETA {estimate.minutes(left)}", style="progress.remaining")


def _score(result: dict) -> str:
    if is_oom(result):
        return "out of memory"
    score = result.get("score")
    return "n/a" if score is None else f"{score:.2f}"


def _seconds(result: dict) -> str:
    seconds = result.get("seconds")
    return "" if seconds is None else f"{seconds:,.1f} s; "


def default_run_dir(model_spec: str, prep) -> Path:
    """runs/<model>[-<each suite's tag>]-<suites>-<hash of every flag>: the same command resumes its
    directory, another config gets its own (never a refusal after the model has loaded)."""
    from harness import tasks
    from harness.rundir import config_hash
    from harness.values import slug

    request = prep.request
    tags = "".join(f"-{tag}" for name, options in request.options.items()   # e.g. the needle's variant
                   if (tag := tasks.get(name).run_dir_tag(options)))
    # Where a served model is, how many requests go at once and where the numbers are logged do not
    # change its results; flags added later count only when given (the same command keeps its directory).
    later = {"tokenizer": None, "attn": "auto"}
    flags = {k: v for k, v in request.flat().items()
             if k not in ("base_url", "max_concurrent", "wandb", "step") and not (k in later and v == later[k])}
    key = config_hash({"model": model_spec, **flags})[:8]
    return Path("runs") / slug(f"{Path(model_spec).name}{tags}-{'+'.join(prep.suites)}-{key}")
