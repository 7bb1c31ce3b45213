"""The suite runner: schedule a suite's unfinished cells, evaluate them, append to the store."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from harness import flops
from harness.store import RunStore
from harness.tasks.base import Suite


def run_suite(suite: Suite, backend, store: RunStore, console: Console, model_config) -> int:
    """Evaluate every cell of ``suite`` not yet in ``store``; returns how many ran.

    ``model_config`` (the HF config) sizes the FLOP estimate printed before the grid starts.
    """
    cells = suite.cells()
    done = store.done(suite.name)
    todo = [c for c in cells if c.key not in done]
    new = suite.new_tokens
    prompt_tokens = sum(c.length for c in todo)
    cost = sum(flops.prefill_flops(model_config, c.length) + flops.decode_flops(model_config, c.length, new) for c in todo)
    already = len(cells) - len(todo)
    console.print(f"[bold]{suite.name}[/]: {len(cells)} cells, {len(todo)} to run"
                  f"{f' ({already} already done)' if already else ''}; "
                  f"{prompt_tokens:,} prompt tokens + up to {len(todo) * new:,} generated; "
                  f"about {cost / 1e12:,.1f} TFLOP")
    if not todo:
        return 0
    columns = (TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.fields[cells]} cells · {task.completed:,.0f}/{task.total:,.0f} tokens · last {task.fields[last]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    # Progress is counted in prompt tokens, not cells: a 128K cell costs far more than a 1K one,
    # so the ETA is only honest when each cell weighs what it costs.
    # A live bar only draws on a terminal; a log (CI, a batch job, `> run.log`) gets one line per cell.
    live = console.is_terminal
    started = time.perf_counter()
    with Progress(*columns, console=console, transient=False, disable=not live) as progress:
        task = progress.add_task(suite.name, total=prompt_tokens, last="-", cells=f"0/{len(todo)}")
        for i, (cell, result) in enumerate(suite.run(todo, backend), 1):
            store.append(result)
            last = f"{cell.key} → {_score(result)}"
            progress.update(task, advance=cell.length, cells=f"{i}/{len(todo)}", last=last)
            if not live:
                console.print(f"  [{i}/{len(todo)}] {last}  ({_seconds(result)}"
                              f"{time.perf_counter() - started:,.0f} s elapsed)", highlight=False)
    return len(todo)


def _score(result: dict) -> str:
    score = result.get("score")
    return "n/a" if score is None else f"{score:.2f}"


def _seconds(result: dict) -> str:
    seconds = result.get("seconds")
    return "" if seconds is None else f"{seconds:,.1f} s; "
