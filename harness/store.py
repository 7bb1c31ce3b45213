"""The results store: the single source of truth that every report reads.

A run directory holds ``manifest.json`` (what was run: model, tokenizer, RoPE, the resolved
suite configs and their hash, package versions, git revision, machine) and ``results.jsonl``
(one JSON line per finished cell). Both are written through :mod:`harness.rundir`: the manifest
atomically, the results as an append-only log fsynced per cell, so a killed run resumes at the
first cell it had not finished, and a torn last line is cut off when the run is reopened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from harness.errors import UserError
from harness.rundir import JsonlLog, KeyedDir, read_json

MANIFEST = "manifest.json"
RESULTS = "results.jsonl"
OOM = "oom"   # the status of a cell that did not fit in memory (harness.oom): no score, missing data
OOM_RETRY = "to try them again (a larger GPU), delete their lines from results.jsonl and rerun"


def is_oom(record: dict) -> bool:
    return record.get("status") == OOM


def oom_lengths(records: list[dict]) -> dict[str, list[int]]:
    """suite -> the lengths whose cells did not fit in memory (sorted), from oom records."""
    out: dict[str, set[int]] = {}
    for r in records:
        out.setdefault(r["suite"], set()).add(r.get("length"))
    return {suite: sorted(n for n in found if n is not None) for suite, found in out.items()}


def oom_summary(records: list[dict], suite: str) -> str:
    """One sentence on ``suite``'s cells that did not fit in memory ("" when none did)."""
    from harness.values import format_length

    mine = [r for r in records if r.get("suite") == suite]
    if not mine:
        return ""
    at = ", ".join(format_length(n) for n in oom_lengths(mine).get(suite, []))
    return (f"{suite}: {len(mine)} cell{'s' if len(mine) > 1 else ''} did not fit in memory (out of memory) at "
            f"length {at}: stored as status oom, missing from every score")


class RunStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.log = JsonlLog(self.path / RESULTS)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def results_path(self) -> Path:
        return self.log.path

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, manifest: dict) -> "RunStore":
        """Open ``path`` for ``manifest``: create it, or resume it if it holds the same config.

        ``manifest["config"]`` is what must match; its hash is stored as ``config_hash``.
        """
        store = cls(path)
        keyed = KeyedDir(path, MANIFEST, "a run")
        if keyed.existing(manifest["config"]) is not None:
            store.log.repair()
            return store
        if store.results_path.exists() and store.results_path.stat().st_size:
            raise UserError(f"--out: {str(path)!r} has results.jsonl but no manifest.json; use another --out")
        keyed.write(manifest["config"], **{k: v for k, v in manifest.items() if k != "config"})
        return store

    def read_manifest(self) -> dict:
        if not self.manifest_path.is_file():
            raise UserError(f"{str(self.path)!r} is not a run directory (no {MANIFEST})")
        return read_json(self.manifest_path, "run")

    # -- results --------------------------------------------------------------------------------
    def results(self, oom: bool = False) -> Iterator[dict]:
        """Every complete result line, in the order written (a torn last line is skipped). A line
        off the schema (no suite, key or numeric score; a suite the run never had) is one error
        naming the file and line: an edited or foreign file, never silently reported.

        Cells that did not fit in memory (status oom) have no score: they are left out (every
        report and summary reads scores) unless ``oom``."""
        suites = None
        for number, record in enumerate(self.log.records(), 1):
            if suites is None:
                suites = set(self.read_manifest().get("config", {}).get("suites", {})) if self.manifest_path.is_file() else set()
            problem = _off_schema(record, suites)
            if problem:
                raise UserError(f"{self.results_path}: result {number} {problem}; the file was edited or damaged: "
                                f"delete that line (a run then redoes the cell) or restore the file")
            if oom or not is_oom(record):
                yield record

    def oom(self) -> list[dict]:
        """The cells that did not fit in memory: missing data, which summaries name."""
        return [r for r in self.results(oom=True) if is_oom(r)]

    def done(self, suite: str) -> set[str]:
        """Keys of finished cells, those that did not fit included (a rerun does not try them again)."""
        return {r["key"] for r in self.results(oom=True) if r.get("suite") == suite}

    def append(self, result: dict) -> None:
        self.log.append(result)

    # -- data-parallel runs: each rank > 0 logs its cells beside the store; rank 0 merges them -----
    def rank_log(self, rank: int) -> JsonlLog:
        """Where rank ``rank`` (> 0) of a data-parallel run appends its cells until rank 0 merges them."""
        return JsonlLog(self.path / f"results.rank{rank}.jsonl")

    def merge_ranks(self) -> int:
        """Append every cell the rank logs hold that the store does not (each cell once, whatever a
        crash left behind), then remove the logs; rank 0 only. Returns how many were added."""
        logs = sorted(self.path.glob("results.rank*.jsonl"))
        if not logs:
            return 0
        have = {(r["suite"], r["key"]) for r in self.results(oom=True)}
        added = 0
        for path in logs:
            for record in JsonlLog(path).records():
                if (record.get("suite"), record.get("key")) not in have:
                    self.append(record)
                    have.add((record["suite"], record["key"]))
                    added += 1
        for path in logs:
            path.unlink()
        return added


def _off_schema(record: dict, suites: set[str]) -> str | None:
    if not isinstance(record.get("suite"), str) or not isinstance(record.get("key"), str):
        return "has no suite or key"
    if suites and record["suite"] not in suites:
        return f"is from suite {record['suite']!r}, which this run does not hold ({', '.join(sorted(suites))})"
    if "status" in record:
        return None if is_oom(record) else f"has status {record['status']!r}; the harness writes only {OOM!r}"
    score = record.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        return f"has score {score!r}, not a number"
    return None


# -- ablation directories: what `harness ablate` writes around its run stores -------------------------
ABLATION = "ablate.json"   # the resolved config and plan (models, mixtures)
STAGES = "stages.jsonl"    # one line per finished stage: name, seconds, tokens


def stages(root: Path) -> JsonlLog:
    """The ablation's stage log (which stages finished, in how long, on how many tokens)."""
    return JsonlLog(Path(root) / STAGES)
