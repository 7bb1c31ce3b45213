"""The offline KJV tasks' documents for lm-eval's ``custom_dataset``: read from the JSONL files beside
this module, so plain ``lm_eval --include_path tasks/regression_tasks`` loads them from any working
directory (a ``data_files`` path in a task YAML is resolved from the working directory)."""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(name: str):
    import datasets

    rows = [json.loads(line) for line in (HERE / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def cloze(**metadata):
    return _load("kjv_cloze.jsonl")


def ppl(**metadata):
    return _load("kjv_ppl.jsonl")
