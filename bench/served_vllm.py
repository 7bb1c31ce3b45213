"""Benchmark and cross-check: one needle grid through a real `vllm serve` (the openai backend), the
offline vLLM backend and the HF backend, on the embedded SmolLM2-135M.

Runs from the CPU vLLM venv (`make vllm-venv`); `make test-vllm` runs it through
tests/test_vllm_backend.py. Steps, one at a time (two cores: never two engines at once):
1. `python -m vllm.entrypoints.openai.api_server` (--dtype, prefix caching, max_model_len the grid's
   longest prompt and answer), then `harness run --backend openai` against it; the server stops.
2. `harness run --backend vllm` (offline LLM, the same max_model_len).
3. `harness run --backend hf`, all three in the same --dtype (bf16 or fp32).
Each run is a normal run directory under --out. Written: comparison.json (per cell: each backend's
output and scores; which agree) and one summary line per backend with its wall time.

    .venv-vllm/bin/python bench/served_vllm.py --preset quick --out runs/served-vllm
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SERVED = "smollm2-135m"
SCORES = ("paper", "exact", "word_recall")


def _harness(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness", "run", *args], check=True)
    return time.perf_counter() - start


def _wait(url: str, proc: subprocess.Popen, limit: float = 600.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5):
                return
        except OSError:
            time.sleep(2)
    raise RuntimeError(f"vllm serve did not answer at {url} within {limit:.0f} s")


def _stop(server: subprocess.Popen, limit: float = 120.0) -> None:
    """Stop the server and its engine processes, and wait until all are gone: the offline engine that
    starts next checks the memory free on the node."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        server.poll()
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(1)
    os.killpg(server.pid, signal.SIGKILL)


def _results(run: Path) -> dict:
    return {r["key"]: r for r in (json.loads(x) for x in (run / "results.jsonl").read_text().splitlines())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--lengths", default=None)
    ap.add_argument("--depths", default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/served-vllm"))
    ap.add_argument("--port", type=int, default=8013)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="every engine's dtype")
    args = ap.parse_args(argv)

    from harness import models
    from harness.evaluate import EvalRequest, prepare
    from harness.precision import long_name

    grid = ["--preset", args.preset] + (["--lengths", args.lengths] if args.lengths else []) + \
        (["--depths", args.depths] if args.depths else [])
    prep = prepare(EvalRequest(preset=args.preset, lengths=args.lengths, depths=args.depths))
    needle = prep.of("needle")[0]   # (NeedleConfig, Haystack)
    max_len = max(needle.lengths) + needle.max_new_tokens + 256   # as harness.evaluate sizes vLLM
    path = models.resolve(SERVED)
    url = f"http://127.0.0.1:{args.port}"
    args.out.mkdir(parents=True, exist_ok=True)
    seconds = {}

    # KV memory of each engine on CPU (GiB); without it vLLM reserves 92% of the node's memory, and
    # the offline engine, started right after the server, is refused.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    env = dict(os.environ)
    server_cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path),
                  "--served-model-name", SERVED, "--dtype", long_name(args.dtype), "--max-model-len", str(max_len),
                  "--hf-overrides", json.dumps({"max_position_embeddings": max_len}),
                  "--enable-prefix-caching", "--enable-prompt-tokens-details", "--seed", "0",
                  "--port", str(args.port)]
    start = time.perf_counter()
    with open(args.out / "server.log", "w") as log:
        server = subprocess.Popen(server_cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            _wait(url, server)
            seconds["server start"] = time.perf_counter() - start
            seconds["openai"] = _harness("--model", SERVED, "--backend", "openai", "--base-url", url, "--tokenizer",
                                         SERVED, *grid, "--out", str(args.out / "openai"))
        finally:
            _stop(server)
    seconds["vllm"] = _harness("--model", SERVED, "--backend", "vllm", "--dtype", args.dtype, *grid,
                               "--out", str(args.out / "vllm"))
    seconds["hf"] = _harness("--model", SERVED, "--backend", "hf", "--dtype", args.dtype, *grid,
                             "--out", str(args.out / "hf"))

    runs = {name: _results(args.out / name) for name in ("openai", "vllm", "hf")}
    cells = []
    for key in sorted(runs["hf"], key=lambda k: (runs["hf"][k]["length"], runs["hf"][k]["depth"])):
        row = {"key": key, **{f"{n}_output": runs[n][key]["output"] for n in runs},
               **{f"{n}_scores": {s: runs[n][key]["scores"][s] for s in SCORES} for n in runs}}
        for other in ("vllm", "hf"):
            row[f"openai=={other}: output"] = runs["openai"][key]["output"] == runs[other][key]["output"]
            row[f"openai=={other}: scores"] = row["openai_scores"] == row[f"{other}_scores"]
        cells.append(row)
    summary = {"cells": len(cells), "dtype": args.dtype, "max_model_len": max_len, "seconds": seconds,
               **{f"openai=={o}: {what}": sum(c[f"openai=={o}: {what}"] for c in cells)
                  for o in ("vllm", "hf") for what in ("output", "scores")},
               "mean paper score": {n: sum(r["scores"]["paper"] for r in runs[n].values()) / len(cells) for n in runs}}
    (args.out / "comparison.json").write_text(json.dumps({"summary": summary, "cells": cells}, indent=1))
    print(json.dumps(summary, indent=1))
    return {"summary": summary, "cells": cells}


if __name__ == "__main__":
    main()
