"""Corpus readers: every source becomes a stream of :class:`Document` {id, domain, text, source}.

Sources (``--source`` values):
- ``embedded`` or ``embedded:DIR``: the seven-domain corpus built by ``harness data corpus``;
- ``slimpajama:DIR``: SlimPajama / RedPajama ``*.jsonl`` and ``*.jsonl.zst`` files under DIR,
  domain from ``meta.redpajama_set_name``; streamed file by file, line by line, so a directory of
  hundreds of GB is never loaded;
- ``jsonl:PATH`` (a file or a directory of ``*.jsonl[.gz|.zst]``): any jsonl with configurable
  text and domain fields (dotted paths such as ``meta.source``);
- ``hf:DIR``: a ``datasets`` directory written by ``save_to_disk``.

Sources are re-iterable (each iteration reopens its files), so a mixture can take a second
epoch over a domain that cannot fill its budget. Malformed lines are counted and skipped; more
than ``max_bad_fraction`` of them is an error.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from harness import rundir
from harness.data.domains import DOMAINS
from harness.errors import UserError

log = logging.getLogger(__name__)

REDPAJAMA = {
    "RedPajamaCommonCrawl": "commoncrawl", "RedPajamaC4": "c4", "RedPajamaGithub": "github",
    "RedPajamaBook": "book", "RedPajamaArXiv": "arxiv", "RedPajamaWikipedia": "wikipedia",
    "RedPajamaStackExchange": "stackexchange",
}
KINDS = ("embedded", "slimpajama", "jsonl", "hf")


@dataclass(frozen=True)
class Document:
    id: str
    domain: str
    text: str
    source: str


def domain_name(value: str) -> str:
    """Map SlimPajama's set names (and case variants) onto ours; other names pass through."""
    if value in REDPAJAMA:
        return REDPAJAMA[value]
    low = value.lower()
    return low if low in DOMAINS else value


def _zstd_blocks(raw):
    """Decompressed blocks of a zstd stream, frame after frame; a stream cut inside a frame raises
    (zstandard's stream reader ends there silently, so a truncated download would build quietly)."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    dec, fed = dctx.decompressobj(), False
    while chunk := raw.read(1 << 20):
        while chunk:
            fed = True
            out = dec.decompress(chunk)
            if out:
                yield out
            if dec.eof:  # a frame ended: the rest of the chunk starts the next one
                chunk, dec, fed = dec.unused_data, dctx.decompressobj(), False
            else:
                chunk = b""
    if fed:
        raise EOFError("the last zstd frame is incomplete (a truncated file?)")


def _split_lines(blocks) -> Iterator[bytes]:
    pending = b""
    for block in blocks:
        parts = (pending + block).split(b"\n")
        pending = parts.pop()
        yield from parts
    if pending:
        yield pending


def _read_lines(path: Path) -> Iterator[bytes]:
    """The raw lines of a jsonl, .jsonl.gz or .jsonl.zst file (decoded per line by the caller, so
    one bad byte costs one line, not the file)."""
    if path.name.endswith(".zst"):
        with open(path, "rb") as raw:
            yield from _split_lines(_zstd_blocks(raw))
    elif path.name.endswith(".gz"):
        with gzip.open(path, "rb") as fh:
            yield from fh
    else:
        with open(path, "rb") as fh:
            yield from fh


def _read_error(exc: Exception) -> bool:
    import zstandard

    return isinstance(exc, (OSError, EOFError, zstandard.ZstdError))


def _field(obj: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


class JsonlSource:
    """Documents from jsonl files (plain, .gz or .zst), streamed line by line."""

    def __init__(self, name: str, files: list[Path], text_field: str = "text", domain_field: str = "domain",
                 id_field: str | None = "id", max_bad_fraction: float = 0.01, default_domain: str | None = None):
        if not files:
            raise UserError(f"--source {name}: no .jsonl, .jsonl.gz or .jsonl.zst files found")
        self.name, self.files = name, files
        self.text_field, self.domain_field, self.id_field = text_field, domain_field, id_field
        self.max_bad_fraction = max_bad_fraction
        self.default_domain = default_domain
        self.manifest: dict | None = None  # the embedded corpus's manifest, when that is the source
        self.seen = self.bad = 0
        self.unknown: dict[str, int] = {}

    def describe(self) -> dict:
        """What the tokenized corpus is keyed by: the files' contents (fingerprints), not just their paths."""
        return {"name": self.name, "files": [str(f) for f in self.files], "content": fingerprint(self.files),
                "text_field": self.text_field, "domain_field": self.domain_field}

    def __iter__(self) -> Iterator[Document]:
        self.seen = self.bad = 0
        self.unknown: dict[str, int] = {}
        for path in self.files:
            lineno = 0
            try:
                for lineno, raw in enumerate(_read_lines(path), 1):
                    if not raw.strip():
                        continue
                    self.seen += 1
                    doc = self._parse(raw, path, lineno)
                    if doc is not None:
                        yield doc
            except Exception as exc:
                if not _read_error(exc):
                    raise
                raise UserError(f"--source {self.name}: {path} cannot be read past line {lineno} "
                                f"({str(exc) or type(exc).__name__}); a truncated or damaged file?") from None
        self.check_bad()

    def _parse(self, raw: bytes, path: Path, lineno: int) -> Document | None:
        """One line as a Document, or None (counted as bad): not UTF-8, not a JSON object, no text."""
        try:
            obj = json.loads(raw.decode("utf-8"))
            text = _field(obj, self.text_field)
            domain = _field(obj, self.domain_field) if self.domain_field else None
            domain = domain if domain is not None else self.default_domain
            if not isinstance(text, str) or not isinstance(domain, str):
                raise ValueError("missing text or domain")
        except (ValueError, TypeError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            self.bad += 1
            return None
        name = domain_name(domain)
        if name not in DOMAINS:
            self.unknown[name] = self.unknown.get(name, 0) + 1
        doc_id = _field(obj, self.id_field) if self.id_field else None
        return Document(str(doc_id) if doc_id is not None else f"{path.name}:{lineno}", name, text, self.name)

    def check_bad(self) -> None:
        """Fail past --max-bad-fraction of malformed lines, else say how many were skipped (also
        called by a reader that stops early, over the lines it saw)."""
        if self.unknown:
            log.warning("%s: %d documents in domains outside the seven (%s); no built-in strategy weights them",
                        self.name, sum(self.unknown.values()),
                        ", ".join(f"{k} {v}" for k, v in sorted(self.unknown.items())[:5]))
        if not self.bad:
            return
        fraction = self.bad / max(self.seen, 1)
        if fraction > self.max_bad_fraction:
            raise UserError(f"--source {self.name}: {self.bad} of {self.seen} lines ({fraction:.1%}) are not "
                            f"UTF-8 JSON objects with a string {self.text_field!r} and {self.domain_field!r}; "
                            f"allowed up to {self.max_bad_fraction:.1%} (--max-bad-fraction)")
        log.warning("%s: skipped %d malformed lines of %d (%.2f%%)", self.name, self.bad, self.seen, 100 * fraction)


class HFSource:
    def __init__(self, path: Path, text_field: str = "text", domain_field: str = "domain"):
        import datasets

        try:
            self.ds = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(f"--source hf:{path}: not a datasets directory written by save_to_disk ({exc})") from None
        if isinstance(self.ds, datasets.DatasetDict):
            self.ds = datasets.concatenate_datasets(list(self.ds.values()))
        missing = [f for f in (text_field, domain_field) if f.split(".")[0] not in self.ds.column_names]
        if missing:
            raise UserError(f"--source hf:{path}: no column {missing[0]!r}; columns: {', '.join(self.ds.column_names)}")
        self.name, self.path, self.text_field, self.domain_field = f"hf:{path}", path, text_field, domain_field

    def describe(self) -> dict:
        return {"name": self.name, "rows": len(self.ds),
                "content": fingerprint(sorted(p for p in Path(self.path).rglob("*") if p.is_file()))}

    def __iter__(self) -> Iterator[Document]:
        for i, row in enumerate(self.ds):
            yield Document(str(row.get("id", i)), domain_name(str(_field(row, self.domain_field))),
                           _field(row, self.text_field), self.name)


def fingerprint(files: list[Path], edge: int = 1 << 16) -> str:
    """A content key for source files: each one's size, mtime and a hash of its first and last
    64 KiB. An edited, replaced or regrown file changes it; reading whole files (hundreds of GB for
    SlimPajama) would cost more than the tokenization it protects, and even a MiB at each end of
    SlimPajama's 59,166 chunks of a few MB would read a third of it on every build."""
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(edge))
            if st.st_size > edge:
                fh.seek(max(edge, st.st_size - edge))
                h.update(fh.read(edge))
    return h.hexdigest()


def _jsonl_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")))
    return []


def check_source(spec: str) -> tuple[str, str]:
    """(kind, path) of a ``--source`` value, checked without reading it (an ablation checks its
    source before its first stage)."""
    kind, _, arg = spec.partition(":")
    accepted = "embedded, embedded:DIR, slimpajama:DIR, jsonl:PATH, hf:DIR"
    if kind not in KINDS:
        raise UserError(f"--source: unknown {spec!r}; accepted: {accepted}")
    if kind != "embedded" and not arg:
        raise UserError(f"--source {kind}: needs a path ({kind}:PATH); accepted: {accepted}")
    if arg and not Path(arg).expanduser().exists():
        raise UserError(f"--source {spec}: {Path(arg).expanduser()} does not exist")
    return kind, arg


def open_source(spec: str, *, text_field: str = "text", domain_field: str | None = None,
                max_bad_fraction: float = 0.01):
    """Parse a ``--source`` value and return a re-iterable source of Documents."""
    kind, arg = check_source(spec)
    if kind == "embedded":
        from harness.data import embedded

        root = Path(arg) if arg else embedded.build()
        manifest = root / "manifest.json"
        if not manifest.is_file():
            raise UserError(f"--source {spec}: {root} has no manifest.json (build it with `harness data corpus`)")
        meta = rundir.read_json(manifest, f"--source {spec}")
        files = [root / s["file"] for s in meta["sources"].values()]
        source = JsonlSource(f"embedded:{root}", files, max_bad_fraction=max_bad_fraction)
        source.manifest = meta
        return source
    path = Path(arg).expanduser()
    if kind == "hf":
        return HFSource(path, text_field, domain_field or "domain")
    files = _jsonl_files(path)
    if kind == "slimpajama":
        return JsonlSource(spec, files, "text", domain_field or "meta.redpajama_set_name", id_field=None,
                           max_bad_fraction=max_bad_fraction)
    return JsonlSource(spec, files, text_field, domain_field or "domain", max_bad_fraction=max_bad_fraction)
