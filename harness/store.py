"""The results store: the single source of truth that every report reads.

A run directory holds ``manifest.json`` (what was run: model, tokenizer, RoPE, the resolved
suite configs and their hash, package versions, git revision, machine; written atomically) and
``results.jsonl`` (append-only, one JSON line per finished cell).

Crash safety: each result line goes out in a single ``write(2)`` on an ``O_APPEND`` descriptor
and is fsynced before the next cell starts, so a killed process leaves whole lines only. Should
the machine itself die mid-write, a torn last line is dropped (and cut off) when the run is
reopened, so a rerun redoes exactly that cell.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

from harness import atomic
from harness.errors import UserError

MANIFEST = "manifest.json"
RESULTS = "results.jsonl"


def config_hash(config: dict) -> str:
    """Stable hash of the part of a run's config that determines its results."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(prefix + k)
    return keys


def check_writable(path: Path) -> None:
    """Refuse an --out we could not create or write, before any work starts (creates nothing)."""
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise UserError(f"--out: {str(path)!r} is a file, not a directory; give a writable directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--out: cannot create {str(path)!r}: {str(existing)!r} is a file; give a writable directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out: cannot write to {str(existing)!r} (permission denied); give a writable directory")


class RunStore:
    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, manifest: dict) -> "RunStore":
        """Open ``path`` for ``manifest``: create it, or resume it if it holds the same config.

        ``manifest["config"]`` is what must match; its hash is stored as ``config_hash``.
        """
        store = cls(path)
        manifest = dict(manifest, config_hash=config_hash(manifest["config"]))
        if store.manifest_path.exists():
            old = store.read_manifest()
            if old.get("config_hash") != manifest["config_hash"]:
                diff = diff_keys(old.get("config", {}), manifest["config"])
                raise UserError(f"--out: {str(path)!r} holds a run with a different config "
                                f"(differs in: {', '.join(diff[:6]) or 'config'}); use another --out or remove it")
            store._repair()
            return store
        check_writable(store.path)
        store.path.mkdir(parents=True, exist_ok=True)
        if store.results_path.exists() and store.results_path.stat().st_size:
            raise UserError(f"--out: {str(path)!r} has results.jsonl but no manifest.json; use another --out")
        atomic.write_text(store.manifest_path, json.dumps(manifest, indent=2, default=str) + "\n")
        return store

    def read_manifest(self) -> dict:
        try:
            return json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            raise UserError(f"{str(self.path)!r} is not a run directory (no {MANIFEST})") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"{self.manifest_path} is not valid JSON ({exc})") from None

    def _repair(self) -> None:
        """Cut a torn last line (no trailing newline) so appends start on a line boundary."""
        p = self.results_path
        if not p.exists() or p.stat().st_size == 0:
            return
        with open(p, "rb+") as fh:
            data = fh.read()
            if data.endswith(b"\n"):
                return
            fh.truncate(data.rfind(b"\n") + 1)
            fh.flush()
            os.fsync(fh.fileno())

    # -- results --------------------------------------------------------------------------------
    def results(self) -> Iterator[dict]:
        """Every complete result line, in the order written (a torn last line is skipped)."""
        if not self.results_path.exists():
            return
        with open(self.results_path, "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                yield json.loads(line)

    def done(self, suite: str) -> set[str]:
        return {r["key"] for r in self.results() if r.get("suite") == suite}

    def append(self, result: dict) -> None:
        line = (json.dumps(result, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        fd = os.open(self.results_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):  # a regular file takes it whole unless the disk is full
                raise OSError(f"short write to {self.results_path} ({written} of {len(line)} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)
