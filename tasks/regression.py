"""4K regression: short-context skill through lm-eval, on the very model object under test.

The paper checks that context extension does not cost short-context skill (MMLU 5-shot). Here any
lm-eval task runs through lm-eval's Python API on the loaded model (so eval-time RoPE overrides
apply), one cell per task; the default set is offline: tasks/regression_tasks/*.yaml over committed
public-domain data. A cell stores lm-eval's metrics and their standard errors; its ``score`` is
the task's first metric.
"""

from __future__ import annotations

import difflib
import math
import time
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

from harness import uncertainty
from harness.errors import UserError
from harness.tasks import base

NAME = "regression"
TASK_DIR = Path(__file__).with_name("regression_tasks")
DEFAULT_TASKS = ("harness_kjv_cloze", "harness_kjv_ppl")
LOWER_IS_BETTER = ("perplexity", "bits_per_byte")   # metric names lm-eval marks higher_is_better: False


@dataclass(frozen=True)
class Cell:
    suite: str
    key: str
    length: int
    task: str


@dataclass(frozen=True)
class RegressionConfig:
    tasks: tuple[str, ...]
    num_fewshot: int
    limit: int | None
    max_length: int
    max_new_tokens: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        return d


@lru_cache(maxsize=2)
def task_manager(builtin: bool = True):
    """lm-eval's task index with our offline tasks included, built once per process.

    Indexing lm-eval's own ~14,000 task YAMLs takes 12 s on a fast 2-core VM (more on a slow one),
    so ``builtin=False`` indexes only ours: enough whenever every task asked for is one of them.
    """
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASK_DIR), include_defaults=builtin)


def manager_for(names):
    """The smallest index that holds every task in ``names`` (ours alone, or lm-eval's too)."""
    return task_manager(builtin=not set(names) <= set(task_manager(builtin=False).all_tasks))


def resolve_config(*, tasks: str | None, num_fewshot: int, limit: int | None, max_length: int) -> RegressionConfig:
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise UserError("suite regression: lm-eval is not installed; pip install 'lm-eval==0.4.13'")
    names = tuple(t.strip() for t in tasks.split(",")) if tasks else DEFAULT_TASKS
    known = manager_for(names).all_tasks
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            raise UserError(f"--regression-tasks: unknown lm-eval task {name!r}"
                            + (f"; did you mean {', '.join(close)}?" if close else "; see `lm_eval ls tasks`"))
    return RegressionConfig(names, num_fewshot, limit, max_length)


@dataclass(frozen=True)
class Options:
    regression_tasks: str | None = base.option("--regression-tasks", "Regression: lm-eval task names (default: "
                                               "the offline KJV cloze and perplexity).")
    regression_fewshot: int = base.option("--regression-fewshot", "Regression: few-shot examples (the paper's "
                                          "MMLU: 5).", 0)
    regression_limit: int | None = base.option("--regression-limit", "Regression: at most this many documents "
                                               "per task.", kind=int)

    def __post_init__(self):
        """The numbers, checked when the options are made: before another suite's preparation
        (BookQA's builds the corpus) can run first."""
        if self.regression_fewshot < 0:
            raise UserError(f"--regression-fewshot: {self.regression_fewshot} must be >= 0")
        if self.regression_limit is not None and self.regression_limit < 1:
            raise UserError(f"--regression-limit: {self.regression_limit} is not accepted; "
                            "give 1 or more documents per task")


class RegressionSuite(base.Suite):
    """lm-eval on the transformers model at up to 4K positions (the paper's "4K regression")."""

    name = NAME
    Options = Options
    backends = ("hf",)  # lm-eval's HFLM runs the transformers model itself

    @staticmethod
    def lower_is_better(column: str) -> bool:
        """Perplexities and bits per byte (lm-eval's higher_is_better False for them); report
        columns are "TASK METRIC"."""
        return column.split(" ")[-1].endswith(LOWER_IS_BETTER)

    @classmethod
    def lm_eval_place(cls, row: base.Row, manifest: dict) -> tuple[str, str]:
        return row.slice, row.metric   # lm-eval's own task and metric names

    @staticmethod
    def lm_eval_version(results: list[dict], task: str):
        """lm-eval's version of the task, as its cell recorded it."""
        return next((r["version"] for r in results if r.get("suite") == NAME and r.get("task") == task
                     and r.get("version") is not None), 1.0)

    @classmethod
    def prepare(cls, grid: base.Grid, options: Options) -> RegressionConfig:
        # The 4K cap shrinks to the model's positions at bind().
        return resolve_config(tasks=options.regression_tasks, num_fewshot=options.regression_fewshot,
                              limit=options.regression_limit, max_length=4096)

    @classmethod
    def bind(cls, prepared: RegressionConfig, loaded) -> "RegressionSuite":
        return cls(replace(prepared, max_length=min(prepared.max_length, loaded.max_positions)), loaded.tokenizer)

    @staticmethod
    def summary(results: list[dict], manifest: dict) -> list[base.Row]:
        """One row per task and metric with lm-eval's stderr (a normal interval). The training seeds
        of a pooled ablation model score the same documents: their mean keeps the seeds' average
        stderr (the documents' noise, not divided by the seeds) and adds the seeds' spread."""
        groups: dict[tuple, list[dict]] = {}
        for r in (r for r in results if r["suite"] == NAME):
            groups.setdefault((r["task"], r["metric"]), []).append(r)
        rows = []
        for (task, metric), mine in groups.items():
            score = sum(r["score"] for r in mine) / len(mine)
            errs = [r["scores"].get(f"{metric}_stderr") for r in mine]
            err = sum(errs) / len(errs) if all(errs) else None
            how = "lm-eval's stderr x 1.96"
            low = high = None
            if err and len(mine) > 1:
                docs = mine[0].get("n_samples") or 2
                est = uncertainty.stratified([uncertainty.Estimate(score, err, None, None, docs, docs)],
                                             [r["score"] for r in mine])
                err, low, high, how = est.stderr, est.low, est.high, f"lm-eval's stderr + {len(mine)} seeds' spread"
            elif err:
                low, high = score - 1.96 * err, score + 1.96 * err
            half = None if low is None else (high - low) / 2
            rows.append(base.Row(NAME, task, metric, score, mine[0].get("n_samples"), stderr=err,
                                 display=f"{score:.4f}" + (f" ± {half:.4f}" if half else ""),
                                 column=f"{task} {metric}", low=low, high=high, how=how))
        return rows

    def __init__(self, config: RegressionConfig, tokenizer):
        self.config, self.tok = config, tokenizer

    def cells(self) -> list[Cell]:
        return [Cell(NAME, f"{NAME}/{task}", self.config.max_length, task) for task in self.config.tasks]

    def evaluate(self, cell: Cell, backend) -> dict:
        from lm_eval import simple_evaluate

        started = time.perf_counter()
        model = backend.model  # the hf backend's transformers model (backends = ("hf",))
        lm = _checked_hflm()(pretrained=model, tokenizer=self.tok, max_length=self.config.max_length, batch_size=1)
        lm.task_name, lm.fewshot = cell.task, self.config.num_fewshot
        out = simple_evaluate(model=lm, tasks=[cell.task], num_fewshot=self.config.num_fewshot,
                              limit=self.config.limit, task_manager=manager_for(self.config.tasks), log_samples=True,
                              bootstrap_iters=1000, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                              fewshot_random_seed=0)
        if self.run_dir is not None:
            _keep_lm_eval_output(out, Path(self.run_dir) / "lm_eval" / cell.task)
        metrics = out["results"][cell.task]
        scores = {k.replace(",none", ""): float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "alias"}
        clean = {k: (v if math.isfinite(v) else None) for k, v in scores.items()}
        declared = list(out.get("higher_is_better", {}).get(cell.task, {}))  # the task's metrics, in order
        primary = next((k for k in declared if k in clean), next(k for k in clean if not k.endswith("_stderr")))
        return {"suite": NAME, "key": cell.key, "length": cell.length, "tokens": None, "task": cell.task,
                "metric": primary, "score": clean[primary], "scores": clean,
                "n_samples": out.get("n-samples", {}).get(cell.task, {}).get("effective"),
                "version": out.get("versions", {}).get(cell.task),
                "seconds": round(time.perf_counter() - started, 3)}


def _keep_lm_eval_output(out: dict, dest: Path) -> None:
    """lm-eval's own results (results.json, as `lm_eval --output_path` writes them) and per-document
    samples (samples.jsonl: prompt, target, responses, metrics) for a cell; written before the cell's
    result is stored, so a stored cell always has them."""
    import json

    from lm_eval.utils import handle_non_serializable

    from harness import rundir

    dest.mkdir(parents=True, exist_ok=True)
    samples = out.get("samples", {})
    lines = [json.dumps(s, default=handle_non_serializable, ensure_ascii=False)
             for task in samples for s in samples[task]]
    rundir.write_text(dest / "samples.jsonl", "".join(line + "\n" for line in lines))
    aggregated = {k: v for k, v in out.items() if k != "samples"}
    rundir.write_text(dest / "results.json", json.dumps(aggregated, indent=1, default=handle_non_serializable,
                                                        ensure_ascii=False))


@lru_cache(maxsize=1)
def _checked_hflm():
    """The HFLM subclass below, defined on first use (lm-eval is slow to import)."""
    from lm_eval.models.huggingface import HFLM

    class CheckedHFLM(HFLM):
        """HFLM that refuses, instead of silently left-truncating, a prompt longer than the context,
        and draws no progress bars of its own."""

        task_name, fewshot = "", 0

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
            for _, context, continuation in requests:
                n = len(context) + len(continuation)
                if n > self.max_length + 1:
                    raise UserError(f"--regression-fewshot: a {self.fewshot}-shot prompt of {self.task_name} is "
                                    f"{n:,} tokens, longer than the {self.max_length:,} the model is evaluated at; "
                                    f"lower --regression-fewshot")
            # The harness reports progress per task (runner.run_suite). lm-eval's own bars would
            # interleave with it, and HFLM.loglikelihood_rolling opens one per batch of windows.
            return super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)

        def loglikelihood(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = True):
            return super().generate_until(requests, disable_tqdm=True)

    return CheckedHFLM
