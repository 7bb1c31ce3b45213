"""Every file and directory the harness keeps is written here, one way, crash-safe.

Four kinds of writes, one policy each:

- **files** (:func:`atomic_path`, :func:`write_text`, :func:`write_json`): a temp file in the same
  directory, fsync, rename, fsync the directory. A reader sees the old file or the new one.
- **append-only logs** (:class:`JsonlLog`: eval results, ablation stages, training metrics): one
  JSON line per record, each in a single ``write(2)`` on an ``O_APPEND`` descriptor, fsynced before
  the writer goes on. A killed process leaves whole lines; a torn last line (a power cut) is skipped
  by readers and cut off when a writer reopens the log.
- **directories** (:func:`publishing`: checkpoints, converted models, the tokenization cache): built
  in a temp directory beside the destination, every file fsynced, then swapped in with one
  ``renameat2(RENAME_EXCHANGE)`` (Linux) or renamed in when nothing was there: at every instant the
  destination is a complete copy, old or new. Elsewhere a replace goes through a ``.old`` name and
  :func:`recover` puts it back if the process died between the two renames.
- **keyed directories** (:class:`KeyedDir`: run stores, ablations, training runs, data builds): a
  record file holds the config and its hash; the same config resumes (or skips), another is refused
  with the keys that differ, before any work starts.

``HARNESS_KILL_AT=POINT[:N]`` kills the process with SIGKILL the N-th time (default 1) it reaches a
named point (``log-append``, ``file-rename``, ``dir-publish``, ``dir-swap``, ``dir-published``): the crash tests
use it to stop a real writer at the worst moments.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from harness.errors import UserError

_kill_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die here if ``HARNESS_KILL_AT`` names this point (fault injection for the crash tests)."""
    spec = os.environ.get("HARNESS_KILL_AT")
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _kill_counts[name] = _kill_counts.get(name, 0) + 1
    if _kill_counts[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# -- config identity -------------------------------------------------------------------------------

def config_hash(config: dict) -> str:
    """Stable hash of the part of a config that determines its results."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested configs."""
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


_HELD: set[Path] = set()   # lock files this process holds


@contextlib.contextmanager
def locked(path: str | os.PathLike, what: str, wait: bool = False) -> Iterator[None]:
    """Hold the writer's lock of directory ``path`` (``what``: "a run", "a build", ...).

    A second process aiming at the same directory is refused with one line naming the holder's
    PID, instead of interleaving its writes; with ``wait`` (a cache directory, which the user did
    not name and cannot rename) it waits for the holder instead, and then finds its work done. The lock is an ``flock`` on ``.<name>.lock`` beside
    the directory (so nothing is created inside it before the work starts); the kernel drops it
    when its process dies, so a killed writer never leaves a stale lock. Re-entrant within one
    process.
    """
    import fcntl

    path = Path(path).absolute()
    lock = path.parent / f".{path.name}.lock"
    if lock in _HELD:  # re-entered: the outermost holder releases it
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise UserError(f"{path}: another process (pid {holder}) is writing {what} there; wait for it to "
                        f"finish (rerunning then resumes) or give another --out") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:  # a full disk: the lock holds, only the holder's PID is not recorded
        if exc.errno != errno.ENOSPC:
            os.close(fd)
            raise OSError(exc.errno, exc.strerror, str(lock)) from None
    _HELD.add(lock)
    try:
        yield
    finally:
        _HELD.discard(lock)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# -- files ----------------------------------------------------------------------------------------

def _remove_orphans(dest: Path) -> None:
    """Remove temp copies of ``dest`` left by writers that were killed (their process is gone).

    Temp names carry the writer's PID, so a temp copy that a live process is still writing is
    never touched.
    """
    for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
        pid = stale.name[len(dest.name) + 6:].split(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # someone else's live process
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _temp_prefix(dest: Path) -> str:
    return f".{dest.name}.tmp-{os.getpid()}."


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mode(full: int) -> int:
    """``full`` (0o666 for files, 0o777 for directories) under the process's umask: what plain
    open() and mkdir() would make. mkstemp/mkdtemp make 0600/0700, unreadable to a lab group
    sharing a results directory or a cache."""
    mask = os.umask(0)
    os.umask(mask)
    return full & ~mask


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``dest``; on success fsync it and rename it over ``dest``.

    For writers that want a filename (matplotlib's savefig, safetensors, parquet).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(dest)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(dest), suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
        except OSError as exc:
            if exc.filename:
                raise
            raise OSError(exc.errno, exc.strerror, str(dest)) from None  # name the file a full disk refused
        os.chmod(tmp_path, _mode(0o666))
        crash_point("file-rename")
        os.replace(tmp_path, dest)
        fsync_dir(dest.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(dest: str | os.PathLike, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(dest: str | os.PathLike, obj) -> None:
    write_text(dest, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: Path, what: str) -> dict:
    """A JSON record the harness wrote; a damaged one is a one-line error naming the file."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what}: {str(path)!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what}: {str(path)!r} is not valid JSON ({exc}); remove the directory and rerun") from None
    if not isinstance(record, dict):
        raise UserError(f"{what}: {str(path)!r} holds a JSON {type(record).__name__}, not the record the harness "
                        f"writes; remove the directory and rerun")
    return record


def member(name, record: Path) -> str:
    """A file or directory name read from ``record`` (a shard, an evaluation directory), accepted only
    as one plain path component: what a run file names stays inside the directory it describes."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UserError(f"{record}: names {name!r}, which is not a plain name inside its directory; "
                        f"the file was edited or damaged")
    return name


# -- append-only logs ------------------------------------------------------------------------------

class JsonlLog:
    """An append-only JSON-lines file: whole lines only, each durable before the writer goes on."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def repair(self) -> None:
        """Cut a torn last line (no trailing newline) so appends start on a line boundary."""
        p = self.path
        if not p.exists() or p.stat().st_size == 0:
            return
        with open(p, "rb+") as fh:
            data = fh.read()
            if data.endswith(b"\n"):
                return
            fh.truncate(data.rfind(b"\n") + 1)
            fh.flush()
            os.fsync(fh.fileno())

    def records(self) -> Iterator[dict]:
        """Every complete line, in the order written (a torn last line is skipped). A complete line
        that is not a JSON object is damage no writer of ours leaves: one line naming it."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            for number, line in enumerate(fh, 1):
                if not line.endswith(b"\n"):
                    break
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
                    record = exc
                if not isinstance(record, dict):
                    raise UserError(f"{self.path}: line {number} is not a JSON record ({str(record)[:80]}); the file "
                                    f"was edited or damaged: delete that line (a run then redoes the cells it "
                                    f"held) or restore the file")
                yield record

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the umask decides, as for open()
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, line)
            if written != len(line):  # a regular file takes it whole unless the disk is full
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (short write: {written} of {len(line)} bytes)", str(self.path))
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # no torn line left behind: the log ends at its last record
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        finally:
            os.close(fd)
        crash_point("log-append")

    def keep(self, predicate: Callable[[dict], bool]) -> None:
        """Rewrite the log (atomically) with only the records ``predicate`` accepts.

        A resumed writer uses it to drop what it logged after the state it resumes from, so the
        redone records are not doubled.
        """
        if not self.path.exists():
            return
        kept = [r for r in self.records() if predicate(r)]
        write_text(self.path, "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"
                                      for r in kept))


# -- directories -----------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system cannot."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.renameat2  # noqa: B018  (glibc >= 2.28)
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    at_fdcwd = -100
    if _libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the filesystem does not support it
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(root)


def _old_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.old")


def recover(dest: Path) -> None:
    """Finish or undo a replace that died between its two renames (systems without RENAME_EXCHANGE)."""
    old = _old_name(Path(dest))
    if old.exists():
        if Path(dest).exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, dest)


@contextlib.contextmanager
def publishing(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp directory beside ``dest``; on success publish it as ``dest``.

    The old ``dest`` (if any) stays in place until the new one replaces it in one rename; an
    exception removes the temp directory; a kill leaves the old copy untouched and a temp
    directory that the next publish of the same destination removes.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover(dest)
    _remove_orphans(dest)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(dest), dir=dest.parent))
    os.chmod(tmp, _mode(0o777))  # mkdtemp makes 0700; a published directory reads like any other
    try:
        yield tmp
        _fsync_tree(tmp)
        crash_point("dir-publish")
        if not dest.exists():
            os.rename(tmp, dest)
        elif not _exchange(tmp, dest):
            os.rename(dest, _old_name(dest))
            crash_point("dir-swap")
            os.rename(tmp, dest)
            tmp = _old_name(dest)
        fsync_dir(dest.parent)
        crash_point("dir-published")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the failed build, or the old copy after a swap


# -- keyed directories -----------------------------------------------------------------------------

class KeyedDir:
    """A directory owned by one config: ``record`` holds {config, config_hash, ...}.

    ``existing(config)`` returns the record when the directory holds this config (the caller
    resumes or skips), None when it holds none yet, and refuses another config naming the keys
    that differ. ``write(config, **extra)`` records the config (atomically).
    """

    def __init__(self, path: str | os.PathLike, record: str, what: str):
        self.path = Path(path)
        self.record_path = self.path / record
        self.what = what  # "a run", "an ablation", "a training run", "a build": for the messages

    def existing(self, config: dict) -> dict | None:
        check_writable(self.path)
        if not self.record_path.is_file():
            return None
        old = read_json(self.record_path, "--out")
        if old.get("config_hash") != config_hash(config):
            diff = diff_keys(old.get("config", {}), config)
            raise UserError(f"--out: {str(self.path)!r} holds {self.what} with a different config "
                            f"(differs in: {', '.join(diff[:6]) or 'config'}); use another --out or remove it")
        return old

    def write(self, config: dict, **extra) -> dict:
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        record = {**extra, "config": config, "config_hash": config_hash(config)}
        try:
            write_json(self.record_path, record)
        except BaseException:
            if created:  # no directory is left without its record (a full disk, a kill)
                shutil.rmtree(self.path, ignore_errors=True)
            raise
        return record
