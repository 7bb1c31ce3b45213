"""Where the harness keeps what it builds or fetches: converted models, wheels, haystacks.

What the harness builds into its cache (a converted model, a tokenized corpus, the embedded
corpus, a data build it needs) lives in a directory named by a hash of its *key*: every input
that decides the directory's contents. For a data build that is the whole config its manifest
records; for the others it includes the source of the code that writes them (:func:`code_hash`).
A change to any input is a new directory, so no version constant needs bumping by hand and no
stale directory is reused or refused; ``key.json`` inside records the key, for a person asking
what it was built from.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path

KEY_FILE = "key.json"


def cache_dir(*parts: str) -> Path:
    """``$LONGCTX_HARNESS_CACHE`` or ``$XDG_CACHE_HOME/longctx-harness`` or ``~/.cache/longctx-harness``."""
    root = os.environ.get("LONGCTX_HARNESS_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "longctx-harness")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def keyed_dir(kind: str, label: str, key: dict) -> Path:
    """``<cache>/<kind>/<label>-<hash of key>`` (``<hash>`` alone without a label). Only ``<kind>`` is
    created: the caller builds the directory itself (and writes ``key.json`` there: :func:`write_key`)."""
    from harness.rundir import config_hash

    digest = config_hash(key)
    return cache_dir(kind) / (f"{label}-{digest}" if label else digest)


def write_key(directory: str | os.PathLike, key: dict) -> None:
    """Record ``key`` as ``directory/key.json`` (atomically): its hash is the directory's name."""
    from harness.rundir import write_json

    write_json(Path(directory) / KEY_FILE, key)


def code_hash(*objects) -> str:
    """A hash of the source of functions, classes or modules: the code that writes a cache
    directory is part of its key, so editing that code is a new directory."""
    h = hashlib.sha256()
    for obj in objects:
        h.update(inspect.getsource(obj).encode())
    return h.hexdigest()[:16]
