"""``harness data build``: source -> tokenized corpus -> mixture plan -> packed shards + stats.

The output directory holds ``shards/*.parquet``, ``stats.json``, ``mixture.png`` and
``manifest.json`` (written last: its presence means the build is complete). The same config in
the same directory is a no-op; a different one is refused.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from harness import paths, rundir
from harness.errors import UserError
from harness.data import corpus, mixture, packing, stats
from harness.values import MIN_SEQ_LEN, check_fraction, check_seed


@dataclass
class Prepared:
    """A build's inputs, checked and opened. ``config`` is all that decides the build: a directory
    records it, and the cache names a directory the harness builds for itself by it (:func:`cache_path`)."""
    config: dict
    strategy: mixture.Strategy
    tokenizer: Any
    source: Any
    held_out: list
    embedded: dict


def prepare(*, source: str, strategy: str, tokens: int, seq_len: int, tokenizer: str, seed: int,
            mix: str | None = None, max_bad_fraction: float = 0.01, read_factor: float = 20.0,
            out: Path | None = None) -> Prepared:
    """Check a build's values (and ``out``, when given, before the tokenizer loads), open its source
    and tokenizer, and compute its config."""
    if seq_len < MIN_SEQ_LEN:
        raise UserError(f"--seq-len: {seq_len} is not accepted; give at least {MIN_SEQ_LEN} tokens (e.g. 8k, 32k)")
    check_seed(seed)
    check_fraction(max_bad_fraction, "--max-bad-fraction")
    if tokens < 1:
        raise UserError(f"--tokens: {tokens} must be positive (e.g. 5M)")
    if tokens < seq_len:
        raise UserError(f"--tokens: {tokens:,} is below one sequence of --seq-len {seq_len:,}")
    strat = mixture.resolve(strategy, seq_len, mix)
    if out is not None:
        rundir.check_writable(out)
    tok = packing.load_tokenizer(tokenizer)
    src = corpus.open_source(source, max_bad_fraction=max_bad_fraction)
    embedded = getattr(src, "manifest", None) or {}
    held_out = embedded.get("held_out", [])
    read_tokens = None if source.startswith("embedded") else int(tokens * read_factor)
    corpus_key = {"source": src.describe(), "corpus_manifest": rundir.config_hash(embedded) if embedded else None,
                  "tokenizer": packing.vocab_hash(tok), "eos": tok.eos_token_id, "exclude": sorted(held_out),
                  "read_tokens": read_tokens, "read_rule": "per_domain"}
    config = {"corpus": corpus_key, "strategy": strat.to_dict(), "tokens": tokens, "seq_len": seq_len,
              "seed": seed, "tokenizer_name": tokenizer}
    return Prepared(config, strat, tok, src, held_out, embedded)


def cache_path(label: str, config: dict) -> Path:
    """Where a build the harness makes for itself lives: ``<cache>/data/<label>-<hash of its config>``.
    Named by the whole config, a build with any input changed (the source's content, the tokenizer,
    the target mix, or what a config records) is a new directory, never a refused one."""
    return paths.keyed_dir("data", label, config)


def build(*, source: str, strategy: str, tokens: int, seq_len: int, tokenizer: str, seed: int, out: Path,
          mix: str | None = None, num_proc: int | None = None, max_bad_fraction: float = 0.01, read_factor: float = 20.0,
          console: Console | None = None) -> dict:
    if num_proc is not None and not 1 <= num_proc <= 1024:
        raise UserError(f"--num-proc: {num_proc} is not accepted; give 1 or more worker processes")
    prepared = prepare(source=source, strategy=strategy, tokens=tokens, seq_len=seq_len, tokenizer=tokenizer,
                       seed=seed, mix=mix, max_bad_fraction=max_bad_fraction, read_factor=read_factor, out=out)
    return build_prepared(prepared, out, num_proc=num_proc, console=console)


def build_prepared(prepared: Prepared, out: Path, *, num_proc: int | None = None, console: Console | None = None,
                   key_file: bool = False) -> dict:
    """Build ``prepared`` into ``out``; ``key_file``: also record its config as ``key.json`` (a cache
    directory named by :func:`cache_path`)."""
    console = console or Console(stderr=True)
    config = prepared.config
    rundir.check_writable(out)
    # A second build into the same --out is refused; into the same cache directory, it waits.
    with rundir.locked(out, "a build", wait=key_file):
        keyed = rundir.KeyedDir(out, "manifest.json", "a build")  # written last: the build's completion mark
        old = keyed.existing(config)
        if old is not None:
            console.print(f"{out}: already built with this config ({old['config_hash']}); nothing to do")
            return old
        created = not out.exists()
        try:
            return _build(prepared, keyed, out, num_proc, console, key_file)
        except BaseException:
            if created:  # a failed build (a full disk, a bad source found late) leaves no half directory
                shutil.rmtree(out, ignore_errors=True)
            raise


def _build(prepared: Prepared, keyed, out: Path, num_proc, console: Console, key_file: bool) -> dict:
    """Tokenize (cached), plan, pack, then record: the manifest, written last, marks the build done."""
    config, src, tok, strat = prepared.config, prepared.source, prepared.tokenizer, prepared.strategy
    held_out, embedded = prepared.held_out, prepared.embedded
    tokens, seq_len, seed, tokenizer = config["tokens"], config["seq_len"], config["seed"], config["tokenizer_name"]
    corpus_key = config["corpus"]
    packing.ensure_documents(src, held_out)
    started = time.perf_counter()
    console.print(f"data build: {strat.name} · {tokens:,} tokens · seq_len {seq_len:,} · seed {seed} · {src.name}")
    console.print(f"reading and tokenizing {src.name} (cached per corpus content and tokenizer)")
    ds = packing.tokenize_corpus(src, tok, key=corpus_key, exclude=held_out, read_tokens=corpus_key["read_tokens"],
                                 num_proc=num_proc)
    domains = np.asarray(ds["domain"])
    lengths = np.asarray(ds["n_tokens"], dtype=np.int64)
    chars = np.asarray(ds["n_chars"], dtype=np.int64) if strat.fill == "reference" else None
    the_plan = mixture.plan(strat, domains, lengths, tokens, seed, chars=chars)
    summary = stats.compute(the_plan, domains, lengths, strategy=strat.name, seq_len=seq_len)
    summary["target_mix"] = strat.mix
    if embedded:
        summary["stand_in_domains"] = sorted({s["domain"] for s in embedded.get("sources", {}).values()
                                              if s.get("stand_in")})
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        packed = packing.pack(the_plan, ds, seq_len, out, progress)
    rundir.write_json(out / "stats.json", summary)
    stats.plot(summary, out / "mixture.png")
    if key_file:
        paths.write_key(out, config)
    manifest = {"tokenizer": {"name": tokenizer, "class": type(tok).__name__,
                "vocab_hash": packing.vocab_hash(tok), "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id},
                "strategy": strat.name, "seed": seed, "seq_len": seq_len, **packed,
                "corpus_documents": int(len(ds)), "held_out": held_out,
                "seconds": round(time.perf_counter() - started, 2)}
    manifest = keyed.write(config, **manifest)
    console.print(stats.table(summary))
    return manifest


def from_scratch_data(seq_len: int, tokens: int, seed: int, console: Console | None = None,
                      tokenizer: str = "smollm2-135m") -> Path:
    """Short-context pretraining data for a from-scratch base: cut_target at ``seq_len``, built once
    into the cache (:func:`cache_path`)."""
    prepared = prepare(source="embedded", strategy="cut_target", tokens=max(tokens, 2_000_000), seq_len=seq_len,
                       tokenizer=tokenizer, seed=seed)
    out = cache_path(f"tiny-cut_target-{seq_len}", prepared.config)
    build_prepared(prepared, out, console=console, key_file=True)
    return out


def load_stats(path: Path) -> dict:
    f = Path(path) / "stats.json"
    if not f.is_file():
        raise UserError(f"{str(path)!r} is not a data build directory (no stats.json); run `harness data build` first")
    return rundir.read_json(f, "data stats")
