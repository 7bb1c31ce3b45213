"""``harness data build``: source -> tokenized corpus -> mixture plan -> packed shards + stats.

The output directory holds ``shards/*.parquet``, ``stats.json``, ``mixture.png`` and
``manifest.json`` (written last: its presence means the build is complete). The same config in
the same directory is a no-op; a different one is refused.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from harness import rundir
from harness.errors import UserError
from harness.data import corpus, mixture, packing, stats
from harness.values import MIN_SEQ_LEN, check_fraction, check_seed


# Bumped whenever what a build's config records changes (2: sources keyed by content, reading capped
# per domain; 3: fingerprints of 64 KiB at each end): directories the harness names itself in the
# cache then get new names, never a "different config" refusal over a build the user never asked for.
FORMAT = 3


def build(*, source: str, strategy: str, tokens: int, seq_len: int, tokenizer: str, seed: int, out: Path,
          mix: str | None = None, num_proc: int | None = None, max_bad_fraction: float = 0.01, read_factor: float = 20.0,
          console: Console | None = None) -> dict:
    console = console or Console(stderr=True)
    if seq_len < MIN_SEQ_LEN:
        raise UserError(f"--seq-len: {seq_len} is not accepted; give at least {MIN_SEQ_LEN} tokens (e.g. 8k, 32k)")
    check_seed(seed)
    check_fraction(max_bad_fraction, "--max-bad-fraction")
    if num_proc is not None and not 1 <= num_proc <= 1024:
        raise UserError(f"--num-proc: {num_proc} is not accepted; give 1 or more worker processes")
    if tokens < 1:
        raise UserError(f"--tokens: {tokens} must be positive (e.g. 5M)")
    if tokens < seq_len:
        raise UserError(f"--tokens: {tokens:,} is below one sequence of --seq-len {seq_len:,}")
    strat = mixture.resolve(strategy, seq_len, mix)
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
    with rundir.locked(out, "a build"):  # a second build into the same --out is refused
        keyed = rundir.KeyedDir(out, "manifest.json", "a build")  # written last: the build's completion mark
        old = keyed.existing(config)
        if old is not None:
            console.print(f"{out}: already built with this config ({old['config_hash']}); nothing to do")
            return old
        created = not out.exists()
        try:
            return _build(src, tok, strat, keyed, config, held_out, embedded, out, num_proc, console)
        except BaseException:
            if created:  # a failed build (a full disk, a bad source found late) leaves no half directory
                shutil.rmtree(out, ignore_errors=True)
            raise


def _build(src, tok, strat, keyed, config: dict, held_out: list, embedded: dict, out: Path, num_proc,
           console: Console) -> dict:
    """Tokenize (cached), plan, pack, then record: the manifest, written last, marks the build done."""
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
    the_plan = mixture.plan(strat, domains, lengths, tokens, seed)
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
    """Short-context pretraining data for a from-scratch base: cut_target at ``seq_len`` (cached)."""
    from harness.paths import cache_dir

    tokens = max(tokens, 2_000_000)
    # Keyed by what decides the build (the strategy with its target mix): a changed default is a
    # new directory, never a refused one.
    key = {"strategy": mixture.resolve("cut_target", seq_len).to_dict(), "tokens": tokens, "seed": seed,
           "format": FORMAT, **({"tokenizer": tokenizer} if tokenizer != "smollm2-135m" else {})}
    out = Path(cache_dir("data", f"tiny-cut_target-{seq_len}-{tokens}-seed{seed}-{rundir.config_hash(key)[:8]}"))
    build(source="embedded", strategy="cut_target", tokens=tokens, seq_len=seq_len,
          tokenizer=tokenizer, seed=seed, out=out, console=console)
    return out


def load_stats(path: Path) -> dict:
    f = Path(path) / "stats.json"
    if not f.is_file():
        raise UserError(f"{str(path)!r} is not a data build directory (no stats.json); run `harness data build` first")
    return rundir.read_json(f, "data stats")
