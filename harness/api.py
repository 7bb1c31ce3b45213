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

import inspect
import tempfile
from dataclasses import dataclass, replace
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


def run(model, *, tokenizer=None, out: str | Path | None = None, verbose: bool = False, **flags) -> Results:
    """Evaluate ``model`` on ``suites``; returns :class:`Results`.

    ``model``: a model source (a directory, a hub id, ``"smollm2-135m"``; with ``backend="openai"``
    the served model's name and ``base_url``), or a transformers model object with its ``tokenizer``
    (evaluated as it is: its dtype, device and RoPE; its train/eval mode is restored afterwards).
    ``flags``: `harness run`'s flags by their field names, declared once (harness.evaluate.EvalRequest,
    each backend's and each suite's Options): ``suites="needle"``, ``lengths="1k,2k"``,
    ``scorer="both"``, ``fast=True``, ...; ``harness run --help`` lists them. ``wandb``: a W&B project
    the summary is logged to at ``step`` (a training loop's), as TensorBoard scalars are in the run
    directory. An unknown keyword is a TypeError; mistakes raise :class:`harness.errors.UserError` with
    the CLI's one-line message.
    """
    from rich.console import Console

    from harness import evaluate as evaluation
    from harness import models

    request = evaluation.request_from_flags(**flags)
    in_memory = not isinstance(model, (str, Path))
    if in_memory:
        _check_in_memory(request)
    elif tokenizer is not None and request.backend != "openai" and not shapes.is_random(str(model)):
        raise UserError("tokenizer: only with a model object, backend='openai' or a random:SHAPE model; a model "
                        "source brings its own")
    if tokenizer is not None and not in_memory:
        request = replace(request, tokenizer=tokenizer)
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


def _signature() -> inspect.Signature:
    """run()'s signature as help() and editors show it: the model, then every flag with its default."""
    from harness import config
    from harness.evaluate import request_flag_types

    P = inspect.Parameter
    return config.signature(*request_flag_types(),
                            leading=(P("model", P.POSITIONAL_OR_KEYWORD), P("tokenizer", P.KEYWORD_ONLY, default=None)),
                            trailing=(P("out", P.KEYWORD_ONLY, default=None), P("verbose", P.KEYWORD_ONLY, default=False)))


def _check_in_memory(request) -> None:
    """A model object is evaluated as it is: on the hf backend, with nothing set that loading would set."""
    if request.backend != "hf":
        raise UserError(f"backend: a model object runs on the hf backend, not {request.backend!r}")
    for name in ("rope_theta", "rope_scaling", "device"):
        if getattr(request, name) is not None:
            raise UserError(f"{name}: a model object is evaluated as it is; set it on the model itself")
    if request.dtype != "auto" or request.for_backend("hf").attn != "auto":
        raise UserError("dtype/attn: a model object is evaluated in its own dtype and attention; change the model itself")


def _collect(results: list[dict], manifest: dict, out: Path | None) -> Results:
    from harness.evaluate import summary_rows

    return Results(rows=summary_rows(results, manifest), cells=results, manifest=manifest, out=out)


run.__signature__ = _signature()
