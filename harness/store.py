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
    def results(self) -> Iterator[dict]:
        """Every complete result line, in the order written (a torn last line is skipped)."""
        return self.log.records()

    def done(self, suite: str) -> set[str]:
        return {r["key"] for r in self.results() if r.get("suite") == suite}

    def append(self, result: dict) -> None:
        self.log.append(result)


# -- ablation directories: what `harness ablate` writes around its run stores -------------------------
ABLATION = "ablate.json"   # the resolved config and plan (models, mixtures)
STAGES = "stages.jsonl"    # one line per finished stage: name, seconds, tokens


def stages(root: Path) -> JsonlLog:
    """The ablation's stage log (which stages finished, in how long, on how many tokens)."""
    return JsonlLog(Path(root) / STAGES)
