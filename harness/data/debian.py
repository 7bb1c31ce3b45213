"""Debian packages without installing them: ``apt-get download`` and a pure-Python .deb reader.

``apt-get`` runs against private lists and caches under the harness cache (``apt-get update``
runs once, only when those lists are missing), so the system's apt state is never changed. A
``.deb`` is an ``ar`` archive holding ``data.tar.*``; it is unpacked here with the standard
library, so neither dpkg nor root is needed to read one.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import logging
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator

from filelock import FileLock

from harness.paths import cache_dir

log = logging.getLogger(__name__)


class Unavailable(Exception):
    """A source's input is unavailable: the source is left out and the reason reported."""


class Apt:
    """``apt-get`` with lists and caches under the harness cache: the system's apt state is left alone."""

    def __init__(self) -> None:
        self.root = cache_dir("apt")
        self.opts = ["-q", "-o", f"Dir::State::Lists={self.root / 'lists'}",
                     "-o", f"Dir::Cache={self.root / 'cache'}",
                     # No binary package caches: they would add 80 MB for the few apt calls of a build.
                     "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
                     "-o", "Acquire::Languages=en"]
        self.updated = False                # apt-get update ran in this build
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Root downloads into the user's cache, which the _apt sandbox user may not enter.
            self.opts += ["-o", "APT::Sandbox::User=root"]

    def _run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([args[0], *self.opts, *args[1:]], capture_output=True, cwd=cwd,
                              env={**os.environ, "LC_ALL": "C"})

    def prepare(self) -> str | None:
        """Make sure the private lists exist (``apt-get update`` only if they are missing).

        Returns None when apt is usable, else the reason it is not.
        """
        if shutil.which("apt-get") is None:
            return "apt-get is not available on this machine"
        lists = self.root / "lists"
        with FileLock(str(self.root / ".lock")):
            if any(lists.glob("*_Packages*")) and any(lists.glob("*_Translation-en*")):
                return None
            return self._update()

    def _update(self) -> str | None:
        lists = self.root / "lists"
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        (self.root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        proc = self._run("apt-get", "update")
        self.updated = True
        if proc.returncode != 0 or not any(lists.glob("*_Packages*")):
            return f"apt-get update failed ({_apt_reason(proc.stderr)})"
        return None

    def download(self, pins: dict[str, str]) -> dict[str, Path]:
        """``{package: .deb path}`` for the pinned versions, or the current candidate where a pin is gone."""
        debs = cache_dir("debs")
        with FileLock(str(debs / ".lock")):
            found = {p: hit for p, v in pins.items() if (hit := self._cached(debs, p, v))}
            todo = {p: v for p, v in pins.items() if p not in found}
            if todo:
                found.update(self._fetch(debs, todo))
            stale = {p: v for p, v in todo.items() if p not in found}
            if stale and not self.updated:      # old lists name files the mirror has dropped: refresh once
                with FileLock(str(self.root / ".lock")):
                    if self._update() is None:
                        found.update(self._fetch(debs, stale))
        return found

    def _fetch(self, debs: Path, todo: dict[str, str]) -> dict[str, Path]:
        if self._get(debs, [f"{p}={v}" for p, v in todo.items()]):      # the usual case: one call
            return {p: hit for p, v in todo.items() if (hit := self._cached(debs, p, v))}
        got = {}
        for pkg, version in todo.items():       # one at a time, falling back to the candidate
            for v in (version, "candidate"):
                if v == "candidate":
                    v = self._candidate(pkg)
                    if not v or v == version:
                        break
                    log.info("%s %s is no longer in the archive; using %s", pkg, version, v)
                if self._cached(debs, pkg, v) or self._get(debs, [f"{pkg}={v}"]):
                    if hit := self._cached(debs, pkg, v):
                        got[pkg] = hit
                        break
        return got

    @staticmethod
    def _cached(debs: Path, pkg: str, version: str) -> Path | None:
        hits = sorted(debs.glob(f"{pkg}_{version.replace(':', '%3a')}_*.deb"))
        return hits[0] if hits else None

    def _get(self, debs: Path, specs: list[str]) -> bool:
        # Into a temp dir first, so an interrupted download never looks like a cached .deb.
        with tempfile.TemporaryDirectory(dir=debs, prefix=".download-") as tmp:
            proc = self._run("apt-get", "download", *specs, cwd=Path(tmp))
            for p in Path(tmp).glob("*.deb"):
                os.replace(p, debs / p.name)
        return proc.returncode == 0

    def _candidate(self, pkg: str) -> str | None:
        proc = self._run("apt-cache", "show", "--no-all-versions", pkg)
        m = re.search(rb"^Version: (\S+)", proc.stdout, flags=re.M)
        return m.group(1).decode() if proc.returncode == 0 and m else None

    def translations(self) -> tuple[list[str], str]:
        """The Translation-en list files (main suite first) and a version string naming their releases."""
        proc = self._run("apt-get", "indextargets", "--format", "$(FILENAME)\t$(CODENAME)\t$(VERSION)\t$(COMPONENT)",
                         "Identifier: Translations", "Language: en")
        rows = [ln.split("\t") for ln in proc.stdout.decode().splitlines() if ln.strip()]
        rows = [r for r in rows if len(r) == 4 and Path(r[0]).is_file()]
        if proc.returncode != 0 or not rows:
            raise Unavailable("no Translation-en lists (apt-get indextargets found none)")
        # bookworm before bookworm-updates before bookworm-security: the release's own text wins.
        rows.sort(key=lambda r: (len(r[1]), r[1], r[3]))
        return [r[0] for r in rows], "; ".join(f"{r[1]}/{r[3]}" + (f" {r[2]}" if r[2] else "") for r in rows)

    def cat(self, path: str) -> bytes:
        """A list file's content, whatever compression apt kept it in (lz4, zstd, gz, xz)."""
        proc = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", path], capture_output=True)
        if proc.returncode != 0:
            raise Unavailable(f"apt-helper could not read {path}")
        return proc.stdout


# --------------------------------------------------------------------------------------------
# .deb files: an ar archive of debian-binary, control.tar.*, data.tar.*

def ar_members(data: bytes) -> dict[str, bytes]:
    """The members of a System V ``ar`` archive (a .deb is one), name -> bytes."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive (no !<arch> magic)")
    members, off = {}, 8
    while off + 60 <= len(data):
        header = data[off:off + 60]
        if header[58:60] != b"`\n":
            raise ValueError(f"corrupt ar header at byte {off}")
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58])
        members[name] = data[off + 60:off + 60 + size]
        off += 60 + size + (size & 1)       # members are 2-byte aligned
    return members


def deb_data(path: Path) -> tarfile.TarFile:
    """The data tarball of a .deb, opened (decompressed in memory)."""
    members = ar_members(Path(path).read_bytes())
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name is None:
        raise ValueError(f"{path}: no data.tar member")
    blob = members[name]
    if name.endswith(".xz"):
        blob = lzma.decompress(blob)
    elif name.endswith(".gz"):
        blob = gzip.decompress(blob)
    elif name.endswith(".bz2"):
        blob = bz2.decompress(blob)
    elif name != "data.tar":
        raise ValueError(f"{path}: {name} uses a compression the standard library cannot read")
    return tarfile.open(fileobj=io.BytesIO(blob))


class Deb:
    """A downloaded .deb: its version, sha256 and the regular files in its data tarball."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        pkg, version, _ = self.path.name[:-4].split("_")
        self.package, self.version = pkg, version.replace("%3a", ":")
        self.sha256 = sha256_file(self.path)
        self.tar = deb_data(self.path)
        self.members = {ti.name.removeprefix("./"): ti for ti in self.tar.getmembers()}

    def files(self, pattern: str) -> Iterator[tuple[str, bytes]]:
        """(path, bytes) of the regular files whose path fully matches ``pattern``, in path order."""
        for name in sorted(self.members):
            ti = self.members[name]
            if ti.isfile() and re.fullmatch(pattern, name):
                yield name, self.tar.extractfile(ti).read()

    def licence(self) -> str:
        ti = self.members.get(f"usr/share/doc/{self.package}/copyright")
        if ti is None or not ti.isfile():
            return "see the package's copyright file"
        m = re.search(r"^License: *(\S.*)$", self.tar.extractfile(ti).read().decode("utf-8", "replace"), flags=re.M)
        return m.group(1).strip() if m else "see the package's copyright file"

    def describe(self) -> dict:
        return {"package": self.package, "version": self.version, "sha256": self.sha256, "licence": self.licence()}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _apt_reason(stderr: bytes) -> str:
    """The most telling line of apt's stderr: its first error, else its first warning, else the last line."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    for prefix in ("E:", "W:"):
        hit = next((ln for ln in lines if ln.startswith(prefix)), None)
        if hit:
            return hit[:240]
    return lines[-1][:240] if lines else "no output"
