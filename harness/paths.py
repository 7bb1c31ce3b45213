"""Where the harness keeps what it builds or fetches: converted models, wheels, haystacks."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$LONGCTX_HARNESS_CACHE`` or ``$XDG_CACHE_HOME/longctx-harness`` or ``~/.cache/longctx-harness``."""
    root = os.environ.get("LONGCTX_HARNESS_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "longctx-harness")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
