"""Benchmark: the whole `harness data build` against a plain fast-tokenizer pass.

Both run in this one process on the same documents: the baseline reads every document of the
source and batch-encodes it with the same fast tokenizer (Rust threads on every core,
TOKENIZERS_PARALLELISM=true), which is the floor for any build that must know token lengths.
The build (fresh tokenization cache, so nothing is reused) reads, tokenizes through
datasets.map, plans the mixture, packs and writes shards and stats. Goal: ratio <= 1.25.

    .venv/bin/python bench/data_build.py --strategy per_source --tokens 5M --seq-len 8k
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="embedded")
    ap.add_argument("--strategy", default="per_source")
    ap.add_argument("--tokens", default="5M")
    ap.add_argument("--seq-len", default="8k")
    ap.add_argument("--num-proc", type=int, default=None, help="as harness data build (default: 1 process)")
    args = ap.parse_args()

    from harness import models
    from harness.data import build, corpus, packing
    from harness.values import parse_budget, parse_length

    tok_dir = models.resolve("smollm2-135m")
    tok = packing.load_tokenizer(str(tok_dir))
    src = corpus.open_source(args.source)  # builds or finds the embedded corpus first (not timed)
    held_out = set((getattr(src, "manifest", None) or {}).get("held_out", []))

    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    t0 = time.perf_counter()
    n_docs = n_tokens = 0
    batch: list[str] = []
    for doc in src:
        if doc.id in held_out:
            continue
        batch.append(doc.text)
        if len(batch) == 1024:
            n_tokens += sum(len(x) for x in tok(batch, add_special_tokens=False)["input_ids"])
            n_docs += len(batch)
            batch = []
    if batch:
        n_tokens += sum(len(x) for x in tok(batch, add_special_tokens=False)["input_ids"])
        n_docs += len(batch)
    baseline = time.perf_counter() - t0
    os.environ["TOKENIZERS_PARALLELISM"] = "false"

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LONGCTX_HARNESS_CACHE"] = str(Path(tmp, "cache"))  # no tokenization cache to reuse
        t1 = time.perf_counter()
        manifest = build.build(source=str(args.source if args.source != "embedded" else f"embedded:{Path(src.files[0]).parent}"),
                               strategy=args.strategy, tokens=parse_budget(args.tokens), seq_len=parse_length(args.seq_len),
                               tokenizer=str(tok_dir), seed=0, out=Path(tmp, "out"), num_proc=args.num_proc)
        ours = time.perf_counter() - t1

    print(f"documents: {n_docs:,}  source tokens: {n_tokens:,}  mixture: {manifest['tokens']:,} tokens in "
          f"{manifest['sequences']} x {manifest['seq_len']}")
    print(f"baseline (read + fast-tokenizer batch encode, {os.cpu_count()} threads): {baseline:.1f} s "
          f"({n_tokens / baseline / 1e6:.2f} M tok/s)")
    print(f"harness data build --strategy {args.strategy} (fresh cache, num_proc {args.num_proc or 1}): {ours:.1f} s")
    print(f"ratio: {ours / baseline:.2f}")


if __name__ == "__main__":
    main()
