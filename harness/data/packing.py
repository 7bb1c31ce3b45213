"""Tokenize a corpus once, then pack a mixture plan into fixed-length training sequences.

Tokenization runs through ``datasets.map`` (``num_proc`` worker processes on request; by default
one process whose Rust encoder uses every core) with the model's fast tokenizer; each document
gets EOS appended. The tokenized corpus is cached by (source, tokenizer) so every
strategy built from the same corpus reuses it. Packing concatenates the plan's segments in order
and cuts the stream into ``seq_len`` sequences; each stores ``input_ids``, ``doc_lens`` (the
lengths of the document pieces inside it, summing to ``seq_len``, for per-document attention
masks) and ``domains`` (one per piece). Shards are Parquet, written atomically; the same plan
gives byte-identical shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
import pyarrow as pa
import pyarrow.parquet as pq

from harness import paths, rundir
from harness.errors import UserError
from harness.paths import cache_dir
from harness.data.mixture import Plan

log = logging.getLogger(__name__)
SHARD_TOKENS = 1 << 27  # about 134M tokens per Parquet shard


def load_tokenizer(spec: str):
    """``smollm2-135m``, a hub id or a directory with a (fast) tokenizer."""
    from harness import models

    path = models.locate(spec, "--tokenizer")
    tok = models.read_tokenizer(path, "--tokenizer")
    if not tok.is_fast:
        raise UserError(f"--tokenizer: {path} has no fast tokenizer (tokenizer.json); packing needs one")
    if tok.eos_token_id is None:
        raise UserError(f"--tokenizer: {path} defines no EOS token to separate documents")
    return tok


def vocab_hash(tok) -> str:
    blob = json.dumps(sorted(tok.get_vocab().items()), separators=(",", ":")).encode()
    return hashlib.sha256(blob + type(tok).__name__.encode()).hexdigest()[:16]


def _generate(source, exclude: list[str], read_tokens: int | None):
    """The source's documents; with ``read_tokens``, at most that many (estimated) per domain, and
    reading stops once every one of the seven domains has them (a domain at the end of a file is
    reached, and the malformed-line rule still judges every line read)."""
    from harness.data.corpus import DOMAINS

    skip = set(exclude)
    read: dict[str, int] = {}
    for doc in source:
        if doc.id in skip:
            continue
        if read_tokens and read.get(doc.domain, 0) >= read_tokens:
            if all(read.get(d, 0) >= read_tokens for d in DOMAINS):
                if hasattr(source, "check_bad"):
                    source.check_bad()
                return
            continue
        yield {"id": doc.id, "domain": doc.domain, "text": doc.text}
        read[doc.domain] = read.get(doc.domain, 0) + len(doc.text) // 4  # a cheap token estimate


def ensure_documents(source, exclude: list[str] = ()) -> None:
    """Fail fast, reading one document, when a source yields nothing usable."""
    if next(_generate(source, exclude, None), None) is None:
        raise UserError(f"--source {source.name}: no readable documents")


def _tokenize(batch: pa.Table, tokenizer: Any, eos: int) -> pa.Table:
    """Encode a batch (Arrow in, Arrow out: no per-token Python objects beyond the encoder's). Each
    document's characters are kept beside its tokens (a mixture with fill reference measures them)."""
    texts = batch.column("text").to_pylist()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):  # no offsets: ~1.5x faster
        rows = [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    else:
        rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    lens = np.fromiter((len(r) + 1 for r in rows), dtype=np.int64, count=len(rows))
    flat = np.empty(int(lens.sum()), dtype=np.int32)
    ends = np.cumsum(lens)
    for row, end, n in zip(rows, ends, lens):
        flat[end - n:end - 1] = row
    flat[ends - 1] = eos
    offsets = np.concatenate([[0], ends]).astype(np.int32)
    ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
    return pa.table({"id": batch.column("id"), "domain": batch.column("domain"), "input_ids": ids,
                     "n_tokens": pa.array(lens), "n_chars": pa.array([len(t) for t in texts], pa.int64())})


def tokenize_corpus(source, tok, *, key: dict, exclude: list[str] = (), read_tokens: int | None = None,
                    num_proc: int | None = None):
    """The corpus as a ``datasets.Dataset`` {id, domain, input_ids, n_tokens, n_chars}, cached by ``key`` (the
    caller's: source content, tokenizer, exclusions, reading cap) and the code that reads and encodes.
    Without ``datasets`` (the mini bundle's GPU machine has none) the same table is made in memory."""
    try:
        import datasets
    except ImportError:   # kept for this process: an ablation builds every mixture from one corpus
        memo = json.dumps({**key, "code": paths.code_hash(_generate, _tokenize)}, sort_keys=True, default=str)
        if memo not in _IN_MEMORY:
            _IN_MEMORY.clear()
            _IN_MEMORY[memo] = _tokenize_in_memory(source, tok, exclude, read_tokens)
        return _IN_MEMORY[memo]

    key = {**key, "code": paths.code_hash(_generate, _tokenize)}
    path = paths.keyed_dir("tokenized", "", key)
    digest = path.name
    rundir.recover(path)
    if (path / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(path))
    # One process tokenizes a corpus; another that asks for the same one waits and reuses it.
    with FileLock(str(path.parent / f".{digest}.lock")):
        if not (path / "dataset_info.json").is_file():
            _tokenize_into(path, source, tok, key, exclude, read_tokens, num_proc)
    return datasets.load_from_disk(str(path))


def _tokenize_into(path: Path, source, tok, key: dict, exclude, read_tokens, num_proc) -> None:
    """Tokenize ``source`` and publish the dataset at ``path`` (whole, or not at all)."""
    import datasets

    ensure_documents(source, exclude)
    work = cache_dir("tokenized", ".work", path.name)
    text_features = datasets.Features({"id": datasets.Value("string"), "domain": datasets.Value("string"),
                                       "text": datasets.Value("string")})
    # gen_kwargs values that are lists are split into shards by datasets (one generator call per
    # item): the exclusions go in as a tuple so the source is read exactly once.
    try:
        raw = datasets.Dataset.from_generator(_generate, gen_kwargs={"source": source, "exclude": tuple(exclude),
                                                                      "read_tokens": read_tokens},
                                              features=text_features, cache_dir=str(work))
    except datasets.exceptions.DatasetGenerationError as exc:  # our reader's one-line refusal, wrapped
        if isinstance(exc.__cause__, UserError):
            raise exc.__cause__ from None
        raise
    features = datasets.Features({"id": datasets.Value("string"), "domain": datasets.Value("string"),
                                  "input_ids": datasets.Sequence(datasets.Value("int32")),
                                  "n_tokens": datasets.Value("int64"), "n_chars": datasets.Value("int64")})
    # One process by default: the Rust encoder already spreads each batch over every core, and
    # worker processes add pickling and shard merging (slower on few cores; see BENCHMARKS.md).
    parallel = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false" if (num_proc or 1) > 1 else "true"
    try:
        tokenized = raw.with_format("arrow").map(
            _tokenize, batched=True, batch_size=1000, num_proc=num_proc if (num_proc or 1) > 1 else None,
            remove_columns=raw.column_names, features=features, desc="tokenizing",
            fn_kwargs={"tokenizer": tok, "eos": tok.eos_token_id}).with_format(None)
    finally:
        if parallel is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = parallel
    with rundir.publishing(path) as tmp:
        tokenized.save_to_disk(str(tmp))
        paths.write_key(tmp, key)
    shutil.rmtree(work, ignore_errors=True)


_IN_MEMORY: dict[str, pa.Table] = {}   # the last corpus tokenized without ``datasets``, by its key


def _tokenize_in_memory(source, tok, exclude, read_tokens, batch_size: int = 1000) -> pa.Table:
    """:func:`tokenize_corpus`'s table without ``datasets``, and not cached: batches of documents
    through the same :func:`_tokenize` (so the same ids). The embedded corpus takes seconds on 16 cores."""
    ensure_documents(source, exclude)
    parts, batch = [], []
    for doc in _generate(source, tuple(exclude), read_tokens):
        batch.append(doc)
        if len(batch) == batch_size:
            parts.append(_tokenize(pa.Table.from_pylist(batch), tok, tok.eos_token_id))
            batch = []
    if batch:
        parts.append(_tokenize(pa.Table.from_pylist(batch), tok, tok.eos_token_id))
    return pa.concat_tables(parts)


def flat_tokens(ds) -> tuple[np.ndarray, np.ndarray]:
    """All token ids as one array and each document's start offset (zero-copy where possible);
    ``ds``: a ``datasets.Dataset`` or a pyarrow Table."""
    column = getattr(ds, "data", ds).column("input_ids").combine_chunks()
    offsets = np.asarray(column.offsets.to_numpy(), dtype=np.int64)
    values = column.values.to_numpy()
    return values, offsets


def pack(plan: Plan, ds, seq_len: int, out_dir: Path, progress=None) -> dict:
    """Write the plan as ``shards/part-NNNNN.parquet``; returns {sequences, shards, tokens}."""
    values, offsets = flat_tokens(ds)
    domains = np.asarray(ds["domain"])
    seg = plan.segments
    seg_len = seg[:, 2] - seg[:, 1]
    n_seq = int(seg_len.sum()) // seq_len
    if n_seq == 0:
        raise UserError(f"--tokens: the budget ({int(seg_len.sum()):,} tokens) is below one sequence of --seq-len {seq_len:,}")
    # Where each segment starts in the concatenated stream, and where each sequence starts.
    ends = np.cumsum(seg_len)
    starts = ends - seg_len
    per_shard = max(1, SHARD_TOKENS // seq_len)
    shard_dir = out_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("doc_lens", pa.list_(pa.int32())),
                        ("domains", pa.list_(pa.string()))])
    files = []
    task = progress.add_task("packing", total=n_seq) if progress else None
    for shard, first in enumerate(range(0, n_seq, per_shard)):
        rows = {"input_ids": [], "doc_lens": [], "domains": []}
        for s in range(first, min(first + per_shard, n_seq)):
            lo, hi = s * seq_len, (s + 1) * seq_len
            i, j = np.searchsorted(ends, lo, side="right"), np.searchsorted(ends, hi, side="left")
            pieces, lens, doms = [], [], []
            for k in range(i, j + 1):
                a, b = max(lo, starts[k]), min(hi, ends[k])
                if b <= a:
                    continue
                doc, d0 = int(seg[k, 0]), int(seg[k, 1])
                base = offsets[doc] + d0 + (a - starts[k])
                pieces.append(values[base:base + (b - a)])
                lens.append(int(b - a))
                doms.append(str(domains[doc]))
            rows["input_ids"].append(np.concatenate(pieces))
            rows["doc_lens"].append(lens)
            rows["domains"].append(doms)
        table = pa.table(rows, schema=schema)
        dest = shard_dir / f"part-{shard:05d}.parquet"
        with rundir.atomic_path(dest) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        files.append(dest.name)
        if progress:
            progress.advance(task, len(rows["doc_lens"]))
    return {"sequences": n_seq, "shards": files, "tokens": n_seq * seq_len}
