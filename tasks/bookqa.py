"""BookQA: answer a question about a whole book, middle-truncated to the target length.

Two sources of items:
- ``--bookqa FILE``: InfiniteBench ``longbook_qa_eng`` jsonl (``id``, ``context``, ``input``,
  ``answer``), the paper's set (351 questions, about 192.6K tokens each);
- the offline default, built here from public-domain plays in the embedded corpus (see
  tasks/bookqa.yaml): speakers renamed, one cloze question per unique line naming one of them,
  each answer's character offset recorded.
A cell is (item, length). The context is cut to fit the prompt in ``length`` tokens, keeping the
head and the tail (InfiniteBench's middle truncation); an offline item runs at a length only if
its line survives the cut, and its depth is where that line sits in what remains.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from harness import uncertainty
from harness.backends import DECODINGS, Sampling, generation_config_sampling
from harness.errors import UserError
from harness.tasks import base, scoring
from harness.values import format_length, parse_lengths

log = logging.getLogger(__name__)
SPEC_PATH = Path(__file__).with_name("bookqa.yaml")
NAME = "bookqa"
FIELDS = ("context", "input", "answer")
PAPER_QUESTIONS = 351   # longbook_qa_eng as the paper evaluated it (February 2024); no digest of that file is published


@dataclass(frozen=True)
class Item:
    id: str
    book: str                  # which context (key into the suite's books)
    question: str
    answers: tuple[str, ...]
    offset: int | None = None  # character offset of the answer's line in the book (offline set)
    span: int = 0              # that line's length in characters


@dataclass(frozen=True)
class Cell:
    suite: str
    key: str
    length: int
    item: str


# -- the offline set -------------------------------------------------------------------------------
def _speakers(text: str, n: int) -> list[str]:
    """The ``n`` most frequent speaker tags ("OTHELLO." on its own line) that are names: a tag
    whose word also occurs in lower case (DUCHESS, KING, CLOWN) is a role, not a name."""
    tags = Counter(re.findall(r"^([A-Z][A-Z]{2,})\.$", text, flags=re.M))
    lower = set(re.findall(r"\b[a-z]+\b", text))
    names = [name for name, _ in tags.most_common() if name.lower() not in lower][:n]
    if len(names) < n:
        raise UserError(f"bookqa: found {len(names)} named speakers, {n} wanted (is this a play with NAME. tags?)")
    return names


def rename(text: str, speakers: list[str], names: list[str]) -> tuple[str, dict[str, str]]:
    """Replace each speaker's name (any case) with an unused new name, throughout the text."""
    taken = set(re.findall(r"[A-Za-z]+", text.lower()))
    pool = [n for n in names if n.lower() not in taken]
    if len(pool) < len(speakers):
        raise UserError(f"bookqa: not enough unused replacement names ({len(pool)}) for {len(speakers)} speakers")
    mapping = dict(zip(speakers, pool))

    def sub(m: re.Match) -> str:
        new = mapping[m.group(0).upper()]
        return new.upper() if m.group(0).isupper() else new

    pattern = re.compile(r"\b(" + "|".join(re.escape(s) for s in speakers) + r")\b", flags=re.I)
    return pattern.sub(sub, text), {old: new for old, new in mapping.items()}


def offline_items(spec: dict, corpus_dir: Path, seed: int = 0) -> tuple[dict[str, str], list[Item]]:
    """The renamed books and their cloze questions (deterministic for a seed)."""
    cfg = spec["offline"]
    from harness.data.embedded import read_documents

    wanted = list(cfg["books"])
    found = {i: d["text"] for i, d in read_documents(corpus_dir, wanted).items()}
    missing = [w for w in wanted if w not in found]
    if missing:
        raise UserError(f"bookqa: the embedded corpus at {corpus_dir} lacks {', '.join(missing)}")
    rng = np.random.default_rng(seed)
    books, items = {}, []
    for book_id in wanted:
        text, mapping = rename(found[book_id], _speakers(found[book_id], cfg["rename"]), list(cfg["names"]))
        books[book_id] = text
        new_names = sorted(mapping.values())
        lines = Counter(text.split("\n"))
        candidates = []
        pos = 0
        for line in text.split("\n"):
            hits = [n for n in new_names if re.search(rf"\b{n}\b", line)]
            if (len(hits) == 1 and len(re.findall(rf"\b{hits[0]}\b", line)) == 1 and lines[line] == 1
                    and len(line.split()) >= cfg["min_words"] and not line.lstrip().startswith("[")):
                candidates.append((pos, line, hits[0]))
            pos += len(line) + 1
        if len(candidates) < 25:
            raise UserError(f"bookqa: {book_id} yields only {len(candidates)} questions (25 needed)")
        # Up to questions_per_book, evenly spread through the book, a seeded pick in each stretch.
        n = min(cfg["questions_per_book"], len(candidates))
        edges = np.linspace(0, len(candidates), n + 1).astype(int)
        for k, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
            pos, line, name = candidates[int(rng.integers(a, b))]
            blanked = re.sub(rf"\b{name}\b", "____", line.strip())
            items.append(Item(f"{book_id}/q{k:03d}", book_id,
                              f'Which name is missing from this line of the book: "{blanked}"?', (name,),
                              offset=pos, span=len(line)))
    return books, items


def read_infinitebench(path: Path) -> tuple[dict[str, str], list[Item]]:
    """InfiniteBench longbook_qa_eng jsonl: one book per line with its question and answers."""
    books, items = {}, []
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise UserError(f"--bookqa: cannot read {str(path)!r} ({exc.strerror})") from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise UserError(f"--bookqa: {path} line {lineno} is not UTF-8 text") from None
            except json.JSONDecodeError:
                raise UserError(f"--bookqa: {path} line {lineno} is not JSON") from None
            if not isinstance(row, dict):
                raise UserError(f"--bookqa: {path} line {lineno} is a JSON {type(row).__name__}, not an object "
                                f"with {', '.join(FIELDS)}")
            missing = [f for f in FIELDS if f not in row]
            if missing:
                raise UserError(f"--bookqa: {path} line {lineno} has no {missing[0]!r} field "
                                f"(InfiniteBench longbook_qa_eng rows need {', '.join(FIELDS)})")
            for name in ("context", "input"):
                if not isinstance(row[name], str) or not row[name].strip():
                    raise UserError(f"--bookqa: {path} line {lineno}: {name!r} is {type(row[name]).__name__}, "
                                    f"not non-empty text")
            answers = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
            if not answers or any(not isinstance(a, (str, int, float)) or isinstance(a, bool) for a in answers):
                raise UserError(f"--bookqa: {path} line {lineno}: 'answer' must be text or a list of texts")
            item_id = str(row.get("id", lineno))
            books[item_id] = row["context"]
            items.append(Item(item_id, item_id, row["input"], tuple(str(a) for a in answers)))
    if not items:
        raise UserError(f"--bookqa: {path} holds no rows")
    return books, items


# -- config and suite ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BookQAConfig:
    lengths: tuple[int, ...]
    per_book: int
    prompt: str
    max_new_tokens: int
    stop_at_eos: bool
    source: str
    sha256: str                    # of the items and books as read
    questions: int = 0             # items in the source
    file_sha256: str | None = None  # of the --bookqa file (InfiniteBench's data changed after the paper)
    skip_leading_eos: bool = False
    decoding: str = "greedy"        # greedy, or generation_config: the model's own (resolved when bound)
    sampling: dict | None = None    # what the model's generation_config asked for (None: greedy)
    seed: int = 0                   # the run's (sampled decoding draws from it and the cell's key)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lengths"] = list(self.lengths)
        # Settings newer than the earliest configs are recorded only when in use, so the config (and its
        # hash: a run directory's identity) of a run that does not use them stays what it was.
        if self.decoding == "greedy":
            for key in ("decoding", "sampling", "seed"):
                del d[key]
        return d


def resolve_config(*, preset: str | None, lengths: str | None, bookqa: str | None, seed: int = 0,
                   decoding: str = "greedy"):
    import hashlib

    from harness.data import embedded

    spec = yaml.safe_load(SPEC_PATH.read_text())
    name = preset or spec["default_preset"]
    if name not in spec["presets"]:
        raise UserError(f"--preset: unknown {name!r} for suite bookqa; known: {', '.join(spec['presets'])}")
    grid = spec["presets"][name]
    if decoding not in DECODINGS:
        raise UserError(f"--bookqa-decoding: unknown {decoding!r}; known: {', '.join(DECODINGS)}")
    grid_lengths = tuple(parse_lengths(lengths or str(grid["lengths"])))  # checked before the corpus is built
    file_digest = None
    if bookqa:
        books, items = read_infinitebench(Path(bookqa))
        source = f"infinitebench:{Path(bookqa).resolve()}"
        file_digest = hashlib.sha256(Path(bookqa).read_bytes()).hexdigest()
        if len(items) != PAPER_QUESTIONS:
            log.warning("--bookqa: %s holds %d questions; the paper's longbook_qa_eng had %d (InfiniteBench's "
                        "data changed after it): scores are not comparable with its table", bookqa, len(items),
                        PAPER_QUESTIONS)
    else:
        books, items = offline_items(spec, embedded.build(), seed)
        source = "offline:embedded-plays"
    digest = hashlib.sha256(json.dumps([[i.id, i.question, i.answers] for i in items]).encode()
                            + "".join(books[k] for k in sorted(books)).encode()).hexdigest()[:16]
    cfg = BookQAConfig(grid_lengths, int(grid["per_book"]), spec["prompt"],
                       int(spec["max_new_tokens"]), bool(spec["stop_at_eos"]), source, digest, len(items),
                       file_digest, bool(spec.get("skip_leading_eos", False)), decoding=decoding, seed=seed)
    return cfg, books, items


def middle_truncate(ids: list[int], budget: int) -> tuple[list[int], int]:
    """The reference's truncate_input: keep the first and the last ``budget // 2`` tokens (so
    ``budget - 1`` of them when it is odd); returns (kept ids, index where the cut is)."""
    if len(ids) <= budget:
        return ids, len(ids)
    half = budget // 2
    return ids[:half] + ids[len(ids) - half:], half


@dataclass(frozen=True)
class Options:
    bookqa_file: str | None = base.option("--bookqa", "BookQA: an InfiniteBench longbook_qa_eng jsonl (default: "
                                          "the offline set).")
    bookqa_decoding: str = base.option("--bookqa-decoding", "BookQA: greedy, or generation_config (what the "
                                       "model's generation_config asks for, as the reference's generate() "
                                       "follows it: sampling, seeded per cell, if it sets do_sample).", "greedy")


class BookQASuite(base.Suite):
    name = NAME
    Options = Options
    figures = ("heatmap",)   # length x answer depth (offline items); in the report: its table columns
    compared_settings = ("lengths", "prompt")

    @classmethod
    def prepare(cls, grid: base.Grid, options: Options):
        return resolve_config(preset=grid.preset, lengths=grid.lengths, bookqa=options.bookqa_file, seed=grid.seed,
                              decoding=options.bookqa_decoding)

    @classmethod
    def bind(cls, prepared, loaded) -> "BookQASuite":
        config, books, items = prepared
        if config.decoding == "generation_config":   # what the model asks for, recorded in the config
            drawn = generation_config_sampling(loaded.model, loaded.path)
            config = replace(config, sampling=drawn.to_dict() if drawn else None)
        return cls(config, books, items, loaded.tokenizer)

    @staticmethod
    def summary(results: list[dict], manifest: dict) -> list[base.Row]:
        rows = []
        for length in sorted({r["length"] for r in results if r.get("suite") == NAME}):
            mine = [r for r in results if r.get("suite") == NAME and r["length"] == length]
            units = dict(clusters=[r["item"] for r in mine], replicates=base.replicates(mine))  # questions
            paper = uncertainty.estimate([r["scores"]["paper"] for r in mine], **units)
            f1 = uncertainty.estimate([r["scores"]["qa_f1"] for r in mine], **units)
            rows.append(base.Row.of(NAME, format_length(length), "paper recall / qa_f1", paper,
                                    display=f"{paper.text()} / {f1.text()}",
                                    column=f"bookqa recall {format_length(length)}", how="over questions"))
        return rows

    @staticmethod
    def paired_units(results: list[dict], manifest: dict) -> dict:
        out: dict[str, dict] = {}
        for r in (r for r in results if r.get("suite") == NAME):
            out.setdefault(f"bookqa recall {format_length(r['length'])}", {})[r["item"]] = (r["scores"]["paper"],
                                                                                           r["item"])
        return out

    @staticmethod
    def score_label(manifest: dict) -> str:
        return "paper score (the reference's recall) · reference protocol"

    def __init__(self, config: BookQAConfig, books: dict[str, str], items: list[Item], tokenizer):
        self.config, self.tok = config, tokenizer
        self._sampling = Sampling(**config.sampling) if config.sampling else None
        self.items = {i.id: i for i in items}
        self._overheads: dict[str, int] = {}
        self.book_texts = books
        self.books = {}
        for book_id, text in books.items():
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            self.books[book_id] = (enc["input_ids"], [o[0] for o in enc["offset_mapping"]])
        self._cells = self._plan()

    def _around(self, item: Item) -> tuple[int, int]:
        """Prompt tokens before and after the book's (planning asks once per item: cached)."""
        if item.id not in self._overheads:
            head, _, tail = self.config.prompt.format(context="\0", question=item.question).partition("\0")
            self._overheads[item.id] = (len(self.tok(head)["input_ids"]),
                                        len(self.tok(tail, add_special_tokens=False)["input_ids"]))
        return self._overheads[item.id]

    def _place(self, item: Item, length: int) -> float | None | bool:
        """Where the answer's line lands (percent of the kept prompt) once the whole prompt is
        middle-truncated to ``length``: None for items without one, False when it is cut away.
        Planning counts the prompt as template + book + template tokens (boundaries may merge a
        token or two; the cell itself truncates the real prompt)."""
        if item.offset is None:
            return None
        ids, starts = self.books[item.book]
        before, after = self._around(item)
        total = before + len(ids) + after
        first = before + int(np.searchsorted(starts, item.offset, side="right")) - 1
        last = before + int(np.searchsorted(starts, item.offset + item.span, side="left"))
        if total <= length:
            return 100.0 * first / total
        half = length // 2
        if last <= half:
            return 100.0 * first / (2 * half)
        if first >= total - half:
            return 100.0 * (first - (total - 2 * half)) / (2 * half)
        return False

    def _plan(self) -> list[Cell]:
        cells = []
        for length in self.config.lengths:
            for book_id in self.books:
                fits = [i for i in self.items.values() if i.book == book_id and self._place(i, length) is not False]
                step = max(1, len(fits) / self.config.per_book)
                chosen = [fits[int(k * step)] for k in range(min(self.config.per_book, len(fits)))]
                cells += [Cell(NAME, f"{NAME}/{length}/{i.id}", length, i.id) for i in chosen]
        return cells

    def cells(self) -> list[Cell]:
        return self._cells

    def prompt_ids(self, item: Item, length: int) -> list[int]:
        """The reference's get_pred: the whole prompt encoded, middle-truncated to ``length``,
        decoded without special tokens and tokenized again."""
        text = self.config.prompt.format(context=self.book_texts[item.book], question=item.question)
        kept, _ = middle_truncate(self.tok.encode(text), length)
        return self.tok(self.tok.decode(kept, skip_special_tokens=True))["input_ids"]

    def evaluate(self, cell: Cell, backend) -> dict:
        started = time.perf_counter()
        item = self.items[cell.item]
        depth = self._place(item, cell.length)
        ids = self.prompt_ids(item, cell.length)
        sampling = self._sampling.for_cell(self.config.seed, cell.key) if self._sampling else None
        gen = backend.generate(ids, self.config.max_new_tokens, stop_at_eos=self.config.stop_at_eos,
                               skip_leading_eos=self.config.skip_leading_eos, sampling=sampling)
        scores = {"paper": scoring.reference_recall(gen.text, item.answers[0], distinct=True),
                  "qa_f1": max(scoring.qa_f1(gen.text, a) for a in item.answers),
                  "word_recall": max(scoring.word_recall(gen.text, a) for a in item.answers)}
        return {"suite": NAME, "key": cell.key, "length": cell.length, "tokens": len(ids), "item": item.id,
                "book": item.book, "depth": None if depth is None else round(depth / 10) * 10,
                "depth_actual": None if depth is None else round(depth, 2), "answers": list(item.answers),
                "score": scores["paper"], "scores": scores, "output": gen.text,
                "new_tokens": gen.new_tokens, "seconds": round(time.perf_counter() - started, 3)}
