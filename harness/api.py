"""The Python API: evaluate any model source, or a model object in memory, on any suite.

    import harness

    res = harness.run("smollm2-135m", suites="needle", lengths="1k,2k", depths="0,50,100")
    res.frame            # pandas DataFrame: one row per summary number (suite, slice, metric, value, 95% CI)
    res.cells            # every stored cell, as dicts (results.jsonl's lines)

    # inside a training loop: the model object itself, no run directory, nothing printed
    res = harness.run(model, tokenizer=tokenizer, suites="needle", lengths="1k", depths="0,50,100")

It is ``harness run`` without the command line: the same request, checks, suites, store and
numbers. Without ``out`` the run goes to a temporary directory removed afterwards; with ``out`` it is
a normal run directory (resumable, reportable). Quiet unless ``verbose=True``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness import shapes
from harness.errors import UserError


@dataclass
class Results:
    """What a run returns: its summary rows and stored cells as data."""

    rows: list[dict]          # suite, slice, metric, value, n, stderr, low, high (95%), how
    cells: list[dict]         # one dict per evaluated cell (the store's lines)
    manifest: dict            # what was run: model, config, versions, machine
    out: Path | None = None   # the run directory, when one was asked for

    @property
    def frame(self):
        """The summary rows as a pandas DataFrame."""
        import pandas as pd

        from harness.evaluate import SUMMARY_FIELDS

        return pd.DataFrame(self.rows, columns=list(SUMMARY_FIELDS))

    @property
    def cells_frame(self):
        """The cells as a pandas DataFrame (nested per-cell scores flattened to scores.NAME columns)."""
        import pandas as pd

        return pd.json_normalize(self.cells)

    def score(self, suite: str, slice: str = "all cells") -> float:
        """One summary value, e.g. ``res.score("needle")`` or ``res.score("needle", "1K")``."""
        for row in self.rows:
            if row["suite"] == suite and row["slice"] == slice:
                return row["value"]
        raise KeyError(f"no {suite!r} row for slice {slice!r}; slices: "
                       f"{sorted({r['slice'] for r in self.rows if r['suite'] == suite})}")


def run(model, *, tokenizer=None, suites: str = "needle", preset: str | None = None, lengths: str | None = None,
        depths: str | None = None, seed: int = 0, backend: str = "hf", dtype: str = "auto", device: str | None = None,
        rope_theta: float | None = None, rope_scaling: str | None = None, fast: bool = False, attn: str = "auto",
        base_url: str | None = None, max_concurrent: int = 8, out: str | Path | None = None,
        wandb: str | None = None, step: int = 0, verbose: bool = False, **suite_options) -> Results:
    """Evaluate ``model`` on ``suites``; returns :class:`Results`.

    ``model``: a model source (a directory, a hub id, ``"smollm2-135m"``; with ``backend="openai"``
    the served model's name and ``base_url``), or a transformers model object with its ``tokenizer``
    (evaluated as it is: its dtype, device and RoPE; its train/eval mode is restored afterwards).
    ``suite_options``: any suite's options by their field names (``scorer="both"``,
    ``protocol="exact"``, ``regression_limit=20``, ...; ``harness run --help`` lists them as flags).
    ``wandb``: a W&B project the summary is logged to at ``step`` (a training loop's step), as
    TensorBoard scalars are in the run directory.
    Mistakes raise :class:`harness.errors.UserError` with the CLI's one-line message.
    """
    from rich.console import Console

    from harness import evaluate as evaluation
    from harness import models, tasks

    options = _options(suite_options, tasks)
    in_memory = not isinstance(model, (str, Path))
    if in_memory:
        if backend != "hf":
            raise UserError(f"backend: a model object runs on the hf backend, not {backend!r}")
        for name, value in (("rope_theta", rope_theta), ("rope_scaling", rope_scaling), ("device", device)):
            if value is not None:
                raise UserError(f"{name}: a model object is evaluated as it is; set it on the model itself")
        if dtype != "auto" or attn != "auto":
            raise UserError("dtype/attn: a model object is evaluated in its own dtype and attention; change the model itself")
    elif tokenizer is not None and backend != "openai" and not shapes.is_random(str(model)):
        raise UserError("tokenizer: only with a model object, backend='openai' or a random:SHAPE model; a model "
                        "source brings its own")
    request = evaluation.EvalRequest(
        suites=suites, preset=preset, lengths=lengths, depths=depths, seed=seed, options=options, backend=backend,
        fast=fast, rope_theta=rope_theta, rope_scaling=rope_scaling, dtype=dtype, device=device, base_url=base_url,
        tokenizer=tokenizer if not in_memory else None, max_concurrent=max_concurrent, wandb=wandb, step=step,
        attn=attn)
    prep = evaluation.prepare(request)
    console = Console(stderr=True, quiet=not verbose)
    evaluation.quiet_libraries()
    source = models.from_objects(model, tokenizer) if in_memory else str(model)
    was_training = bool(getattr(model, "training", False)) if in_memory else False
    if in_memory:
        model.eval()   # dropout off while evaluating; the mode it had comes back below
    try:
        if out is not None:
            return _collect(*evaluation.evaluate(source, prep, Path(out), console), Path(out))
        with tempfile.TemporaryDirectory(prefix="harness-run-") as tmp:
            return _collect(*evaluation.evaluate(source, prep, Path(tmp) / "run", console), None)
    finally:
        if was_training:
            model.train()


def _options(given: dict, tasks) -> dict:
    """Suite options by field name -> {suite: its Options}; an unknown name is a TypeError, as for any call."""
    from harness.tasks.base import option_flags

    per_suite, owner = {}, {}
    for name in tasks.SUITES:
        for f in option_flags(tasks.get(name).Options):
            owner[f.field] = name
    for key in given:
        if key not in owner:
            raise TypeError(f"run() got an unexpected keyword argument {key!r}; suite options: {', '.join(sorted(owner))}")
    for name in tasks.SUITES:
        mine = {k: v for k, v in given.items() if owner[k] == name}
        per_suite[name] = tasks.options(name, **mine)
    return per_suite


def _collect(results: list[dict], manifest: dict, out: Path | None) -> Results:
    from harness.evaluate import summary_rows

    return Results(rows=summary_rows(results, manifest), cells=results, manifest=manifest, out=out)
