"""What every suite is: one interface, so the suite runner, the terminal table and the report loop
over the registry (``harness.tasks.SUITES``) instead of naming suites.

A suite has two halves:

- **class side** (no model): ``Options`` (its own flags, declared once as dataclass fields whose
  metadata holds the CLI help), ``prepare(grid, options)`` that checks every flag and resolves
  what needs no model (grids, files, task names), ``summary(results)`` that turns stored results
  into rows, and ``figures`` naming the plots its results support. What a suite owns beyond its
  cells is class-side too, each with a default: ``run_dir_tag`` (its part of a run directory's
  name), ``cost`` (its grid's cells and prefill spans for estimates, without a model),
  ``lm_eval_place`` / ``lm_eval_version`` (its rows in results_lm_eval.json), ``protocol`` and
  ``compared_settings`` (what a comparison report tells runs apart by), and the figure and report
  page kinds it names (drawn by harness.reports.figures' registries).
- **instance side** (bound to a loaded model by ``bind(prepared, loaded)``): ``config`` (saved in
  the manifest; it determines the results), ``cells()`` (pure data with stable keys), ``check()``
  (fails before the run directory is made), and ``run(todo, backend)`` yielding ``(cell, result)``
  as each finishes (cell by cell through ``evaluate`` unless the suite batches).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

from harness.errors import UserError
from harness.values import format_length, parse_length


@dataclass(frozen=True)
class Grid:
    """Settings every suite may read: the grid preset and axes, the seed."""

    preset: str | None = None
    lengths: str | None = None
    depths: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class NoOptions:
    """A suite without flags of its own."""


@dataclass(frozen=True)
class Row:
    """One summary number with its 95% interval: a line of the terminal table; with ``column``, a
    cell of the report table."""

    suite: str
    slice: str
    metric: str
    value: float
    n: int | None = None
    stderr: float | None = None
    display: str | None = None   # the value as printed, when one float does not say it
    column: str | None = None    # the report table's column (one row per model), None: terminal only
    low: float | None = None     # the 95% interval (harness.uncertainty), None: not estimable
    high: float | None = None
    how: str = ""                # what the interval is over, e.g. "clustered by length"
    compared: bool = True        # False: shown in the report table, never given a verdict (a descriptive column)

    @classmethod
    def of(cls, suite: str, slice: str, metric: str, est, **kw) -> "Row":
        """A row from a :class:`harness.uncertainty.Estimate`."""
        return cls(suite, slice, metric, est.mean, est.n, est.stderr, low=est.low, high=est.high, **kw)

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2

    def text(self, digits: int = 3) -> str:
        if self.display:
            return self.display
        hw = self.half_width
        return f"{self.value:.{digits}f}" + ("" if hw is None else f" ± {hw:.{digits}f}")


def option(flag: str, help: str, default: Any = None, kind: type | None = None) -> Any:
    """A suite option: a setting (harness.config) that `harness run` takes as ``flag`` and
    ``harness.run`` as the field's name. ``kind`` is the value's type (default: the default's type, or
    str); a bool is an on/off flag."""
    from harness.config import setting

    return setting(default, help, flag=flag, kind=kind)


@dataclass(frozen=True)
class Cost:
    """A suite's grid as a cost estimate sees it before a model loads (``Suite.cost``):
    ``harness ablate``'s plan and FLOP estimate (harness.estimate) read it."""

    cells: tuple = ()          # the grid's cells (pure data with a ``length``), as cells() makes them
    spans: tuple = ()          # (tokens reused, prompt tokens) per cell, as a prefix-sharing backend computes them
    new_tokens: int = 0        # greedy tokens per cell at most
    named_rate: str | None = None   # its whole time per model as measured on a named device (a key of
                                    # harness.estimate.NAMED's rates), for a suite whose cells need the model


def metric_name(text: str) -> str:
    """``text`` as lm-eval names a task or metric: lower case, [a-z0-9_.-]."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.strip()).strip("_").lower() or "value"


def length_key(text: str) -> str | None:
    """A length slice ("4K") as lm-eval's RULER tasks key their metrics: its tokens ("4096"); None for
    a slice that is not a length."""
    try:
        return str(parse_length(text))
    except (UserError, ValueError):
        return None


def haystack_region(result: dict) -> tuple:
    """The haystack region a stored cell read: its length and draw (cells sharing one are not
    independent, so they are one cluster of an interval)."""
    return result.get("length"), result.get("sample", 0)


def length_cells(results: list[dict]) -> list:
    """Stored cells as harness.effective_length reads them: key, length, haystack region, score and
    training seed (a pooled model's replicate)."""
    from harness.effective_length import Cell

    return [Cell(r["key"], r["length"], haystack_region(r), r["score"], r.get("replicate"))
            for r in results if r.get("length") is not None and r.get("score") is not None]


def effective_rows(label: str, results: list[dict]) -> list[Row]:
    """The effective length of ``results`` (one suite's cells) by RULER's rule and by NoLiMa's, each
    with its bootstrap interval (harness.effective_length): a report column each, shown as
    "4K [2K, 8K]" and never given a mean-difference verdict (harness.reports.paired compares two
    runs' effective lengths on their own). RULER's slice stays "effective length", the lm-eval key
    (``effective_length``) runs had before NoLiMa's joined it."""
    from harness import effective_length as effective

    rows = []
    for rule in effective.RULES:
        found = effective.estimate(length_cells(results), rule)
        if found is None:
            continue
        metric = rule.describe()
        if found.base is not None:
            metric += f" {found.base:.3f} (the best of {', '.join(format_length(n) for n in found.base_from)})"
        rows.append(Row(label, "effective length" + ("" if rule is effective.RULER else f" ({rule.kind_name})"),
                        metric, float(found.length), found.n, display=found.text(), column=rule.column(label),
                        low=float(found.low), high=float(found.high), how=found.how, compared=False))
    return rows


def replicates(results: list[dict]) -> list:
    """Each stored result's replicate: the training seed of a pooled ablation model (None for a
    plain run; harness.reports.compare pools seeds, harness.uncertainty says how they count)."""
    return [r.get("replicate") for r in results]


def variant_of(manifest: dict, suite: str) -> str | None:
    """The variant a stored run of ``suite`` used (None: the suite's own task)."""
    return (manifest.get("config", {}).get("suites", {}).get(suite, {}).get("variant") or {}).get("name")


class Suite:
    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    backends: ClassVar[tuple[str, ...]] = ("hf", "vllm", "openai")
    figures: ClassVar[tuple[str, ...]] = ()       # a run's own plots: "heatmap" (length x depth), "loss_curves"
    run_dir = None   # the run directory, set by the runner: where a suite keeps its own files (lm-eval's samples)
    report_pages: ClassVar[tuple[str, ...]] = ()  # comparison report pages: "heatmaps", "differences", "loss_curves"
    # Keys of its stored config (dotted into nested ones) that make two runs less comparable when they
    # differ: the comparison report warns about each.
    compared_settings: ClassVar[tuple[str, ...]] = ()
    config: Any

    # -- class side: no model -----------------------------------------------------------------------
    @classmethod
    def prepare(cls, grid: Grid, options) -> Any:
        """Check the flags and resolve what needs no model; mistakes fail before a model loads."""
        raise NotImplementedError

    @classmethod
    def bind(cls, prepared, loaded) -> "Suite":
        """The suite on a loaded model (its tokenizer, its positions)."""
        raise NotImplementedError

    @staticmethod
    def summary(results: list[dict], manifest: dict) -> list[Row]:
        """The suite's summary rows from its stored results (``results`` holds every suite's)."""
        return []

    @staticmethod
    def paired_units(results: list[dict], manifest: dict) -> dict[str, dict[str, tuple[float, object]]]:
        """Per report column: unit key -> (score, cluster), for paired comparisons of two runs on the
        units both hold (harness.reports.paired). Empty: compared from the rows' standard errors."""
        return {}

    @staticmethod
    def effective_cells(results: list[dict], manifest: dict) -> dict[str, list]:
        """Per label (the prefix of its report columns: "needle"), the cells whose effective length
        two runs compare (:func:`length_cells`; harness.reports.paired). Empty: no effective length."""
        return {}

    @staticmethod
    def expected_cells(config: dict) -> int | None:
        """How many results a finished run of this suite holds, from its stored config (None: not
        known from the config alone); the report warns about a run short of it."""
        return None

    @staticmethod
    def lower_is_better(column: str) -> bool:
        """Whether a smaller value in this report column is the better one (a loss)."""
        return False

    @staticmethod
    def score_label(manifest: dict) -> str:
        """What a stored run's ``score`` is, and under which protocol: every figure names it."""
        return "score"

    @staticmethod
    def protocol(config: dict) -> str | None:
        """The protocol a stored config followed, for a suite that has several (a report's labels tell
        runs apart by it); None: one protocol."""
        return None

    @classmethod
    def run_dir_tag(cls, options) -> str | None:
        """A word for the default run directory's name from the suite's ``Options`` (the needle's
        variant); None: the suite adds nothing."""
        return None

    @classmethod
    def cost(cls, prepared) -> Cost | None:
        """The grid's cells and prefill spans from what ``prepare`` resolved, without a model (cost
        estimates); None: not known before the model loads."""
        return None

    @classmethod
    def lm_eval_place(cls, row: Row, manifest: dict) -> tuple[str, str]:
        """(lm-eval task, metric key) of one summary row in results_lm_eval.json. Default: the task
        ``harness_<suite>`` (``harness_<suite>_<variant>`` for a variant), a length slice keyed by its
        tokens as lm-eval's RULER tasks key theirs ("4096"), "all cells" by its metric's name, any
        other slice by its own."""
        variant = variant_of(manifest, cls.name)
        task = f"harness_{cls.name}" + (f"_{metric_name(variant)}" if variant else "")
        if row.slice == "all cells":
            return task, metric_name(row.metric.split(" (")[0])
        return task, length_key(row.slice) or metric_name(row.slice)

    @staticmethod
    def lm_eval_version(results: list[dict], task: str):
        """The version results_lm_eval.json gives ``task`` (lm-eval's own for its tasks)."""
        return 1.0

    # -- instance side: bound to a model --------------------------------------------------------------
    def cells(self) -> list:
        raise NotImplementedError

    def check(self) -> None:
        """Refuse a grid that cannot be built (before the run directory is made)."""

    def warn(self, max_positions: int) -> None:
        """Say what the user should know before the cells run (nothing by default)."""

    @property
    def new_tokens(self) -> int:
        """Greedy tokens per cell at most (the cost estimate's decoding part)."""
        return getattr(self.config, "max_new_tokens", 0)

    def prefill_spans(self, todo: list) -> list[tuple[int, int]]:
        """(tokens already cached, prompt tokens) per cell, as a backend that shares prompt prefixes
        computes them (the cost estimate's prefill part). Default: every prompt whole."""
        return [(0, c.length) for c in todo]

    def evaluate(self, cell, backend) -> dict:
        raise NotImplementedError

    def run(self, todo: list, backend) -> Iterator[tuple[Any, dict]]:
        """(cell, result) as each finishes; cell by cell unless a suite batches. A cell that runs
        out of GPU memory is stored as oom (no score: missing data) and the next one runs."""
        from harness import oom
        from harness.store import is_oom

        for cell in todo:
            try:
                result = self.evaluate(cell, backend)
            except oom.Error as exc:
                result = oom.record(cell, exc)
            if is_oom(result):
                oom.free()   # outside the except: the traceback's frames, and their tensors, are gone
            yield cell, result
