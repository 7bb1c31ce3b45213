"""A run's numbers in lm-eval's results shape, so tools that read lm-eval output read a run too.

Every run directory gets ``results_lm_eval.json`` (the ``results_*.json`` name lm-eval's own
output and the leaderboard parsers glob for), rebuilt from the store after each ``harness run``:

    results     {task: {"alias": task, "METRIC,none": value, "METRIC_stderr,none": stderr | "N/A"}}
    configs, versions, n-shot, higher_is_better, n-samples, config, model_name, date, git_hash
    out_of_memory   {suite: [lengths]}: cells that did not fit (harness.oom), missing from the numbers

The numbers are the suites' own summary rows (the terminal table's), nothing recomputed; each
suite places its rows (``Suite.lm_eval_place``, ``Suite.lm_eval_version``):
- needle (``harness_needle``, or ``harness_needle_<variant>``) and bookqa (``harness_bookqa``): one
  metric per context length keyed by its length in tokens, as lm-eval's RULER tasks key theirs
  (``"4096,none"``); the mean over every cell under the score's name (``"paper,none"``); RULER's
  effective length as ``"effective_length,none"``.
- regression: lm-eval's own task names and metrics (``harness_kjv_cloze`` ``acc,none`` ...).
- loss: ``harness_loss`` (the mean over domains) and ``harness_loss_<domain>``, one metric per
  position bucket keyed by the bucket's last position (``"1024,none"``: nats/token, lower is better).
"""

from __future__ import annotations

from pathlib import Path

from harness import rundir
from harness.tasks.base import metric_name

FILE = "results_lm_eval.json"
FILTER = "none"   # lm-eval's filter name for unfiltered outputs


def build(results: list[dict], manifest: dict, oom_cells: list[dict] = ()) -> dict:
    """The lm-eval-shaped document of one run (its results and manifest as stored; ``oom_cells``:
    the cells that did not fit in memory, named by length)."""
    from harness import tasks

    config = manifest.get("config", {})
    model = manifest.get("model", {})
    out = {"results": {}, "configs": {}, "versions": {}, "n-shot": {}, "higher_is_better": {}, "n-samples": {}}
    for suite_name, suite_config in config.get("suites", {}).items():
        suite = tasks.get(suite_name)
        for row in suite.summary(results, manifest):
            if row.value is None:
                continue
            task, key = suite.lm_eval_place(row, manifest)
            entry = out["results"].setdefault(task, {"alias": task})
            entry[f"{key},{FILTER}"] = float(row.value)
            entry[f"{key}_stderr,{FILTER}"] = float(row.stderr) if row.stderr is not None else "N/A"
            column = row.column or f"{suite_name} {row.metric}"   # loss rows per domain have no report column
            out["higher_is_better"].setdefault(task, {})[key] = not suite.lower_is_better(column)
            samples = out["n-samples"].setdefault(task, {"original": 0, "effective": 0})
            if row.n:
                samples["original"] = samples["effective"] = max(samples["effective"], int(row.n))
            out["versions"].setdefault(task, suite.lm_eval_version(results, task))
            out["n-shot"].setdefault(task, int(suite_config.get("num_fewshot", 0) or 0))
            out["configs"].setdefault(task, {"task": task, "harness_suite": suite_name,
                                             "metadata": {"suite_config": suite_config}})
    out["config"] = {
        "model": f"longctx-harness ({config.get('backend', 'hf')})",
        "model_args": f"pretrained={config.get('model', {}).get('id', model.get('spec', ''))}",
        "batch_size": 1, "batch_sizes": [], "device": model.get("device"), "use_cache": None, "limit": None,
        "bootstrap_iters": 0, "gen_kwargs": None, "random_seed": 0, "numpy_seed": 0, "torch_seed": 0,
        "fewshot_seed": 0, "model_dtype": model.get("dtype"),
    }
    out["model_name"] = str(config.get("model", {}).get("id", model.get("name", "")))
    out["model_name_sanitized"] = metric_name(out["model_name"])
    out["date"] = manifest.get("created")
    out["git_hash"] = manifest.get("git_revision")
    out["config_hash"] = manifest.get("config_hash")
    if oom_cells:
        from harness.store import oom_lengths

        out["out_of_memory"] = oom_lengths(list(oom_cells))
    return out


def write(run_dir: Path, results: list[dict], manifest: dict, oom_cells: list[dict] = ()) -> Path:
    """(Re)write the run's lm-eval-shaped results, atomically."""
    path = Path(run_dir) / FILE
    rundir.write_json(path, build(results, manifest, oom_cells))
    return path
