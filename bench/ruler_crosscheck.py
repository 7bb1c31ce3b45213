"""Cross-check: our `passkey` needle variant against lm-eval's RULER `niah_single_1` on one model.

Both sides hide a 7-digit number under an adjective-noun key in RULER's repeated filler, ask for it
with RULER's template and answer prefix, decode greedily (128 tokens) and score with RULER's
string match. They draw different random keys, values and positions, so they agree only up to
sampling error: the table shows each accuracy with its binomial standard error and whether the
difference is within two combined standard errors.

Lengths: lm-eval's `max_seq_lengths` L bounds prompt + 128 answer tokens, so its prompts are just
under L - 128 tokens; ours are exactly L - 128 (our cell length is the prompt's token count).
lm-eval's window is set to L too, so a length past the model's positions (where SmolLM2 starts to
fail, and the check discriminates) runs on both sides instead of being truncated on one.

    .venv/bin/python bench/ruler_crosscheck.py --model smollm2-135m --lengths 1024,4096 --samples 20

It runs both commands it prints (lm_eval, then harness run) and reads their outputs. Rerun with
the same --work to resume: lm-eval's samples are reused and `harness run` skips finished cells.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path


def stderr(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def run(cmd: list[str], log: Path) -> None:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}); see {log}:\n" + log.read_text()[-3000:])


def lm_eval_side(model_dir: Path, length: int, samples: int, work: Path, dtype: str) -> list[float]:
    out = work / f"lm-eval-{length}"
    # max_length=L: lm-eval's window is the task's length, not the model's positions (8192 for
    # SmolLM2), so an L past them is asked as built instead of left-truncated to fit.
    from harness.precision import long_name

    args = f"pretrained={model_dir},dtype={long_name(dtype)},max_length={length}"
    pattern = str(out / "**" / "samples_niah_single_1_*.jsonl")
    if glob.glob(pattern, recursive=True):  # a rerun with --work: lm-eval's samples are kept
        print(f"reusing lm-eval's samples in {out}", flush=True)
    else:
        run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", args,
             "--tasks", "niah_single_1", "--metadata", json.dumps({"max_seq_lengths": [length]}),
             "--limit", str(samples), "--batch_size", "1", "--log_samples", "--output_path", str(out)],
            work / f"lm-eval-{length}.log")
    files = glob.glob(pattern, recursive=True)
    rows = [json.loads(line) for f in files for line in Path(f).read_text().splitlines() if line.strip()]
    from harness.tasks.scoring import string_match_all

    scores = []
    for r in rows:  # RULER's string_match_all on lm-eval's own response, checked against its metric
        resp = r["filtered_resps"][0] if isinstance(r["filtered_resps"], list) else r["filtered_resps"]
        mine = string_match_all(resp if isinstance(resp, str) else resp[0], r["doc"]["outputs"])
        if str(length) in r and abs(float(r[str(length)]) - mine) > 1e-9:
            sys.exit(f"scoring disagrees with lm-eval's on doc {r['doc_id']}: {r[str(length)]} vs {mine}")
        scores.append(mine)
    return scores


def harness_side(model: str, length: int, samples: int, work: Path, dtype: str) -> list[float]:
    out = work / f"harness-{length}"
    step = 100 / (samples - 1) if samples > 1 else 0
    depths = ",".join(f"{i * step:.4g}" for i in range(samples))
    run([sys.executable, "-m", "harness", "run", "--model", model, "--suite", "needle", "--variant", "passkey",
         "--lengths", str(length - 128), "--depths", depths, "--dtype", dtype, "--out", str(out)], work / f"harness-{length}.log")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return [r["score"] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="1024,4096", help="lm-eval max_seq_lengths (ours: each minus 128)")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--work", default=None, help="keep outputs here (default: a temp dir)")
    args = ap.parse_args()

    from harness import models, precision

    # Both sides compute in one dtype: what `auto` picks here (bf16 only where the CPU has it natively).
    compute = precision.resolve("auto", "cpu")
    print(f"dtype {compute.name} ({compute.reason}; CPU flags {' '.join(compute.cpu_flags)})", flush=True)
    model_dir = models.resolve(args.model)
    work = Path(args.work or tempfile.mkdtemp(prefix="ruler-crosscheck-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for length in (int(v) for v in args.lengths.split(",")):
        theirs = lm_eval_side(model_dir, length, args.samples, work, compute.name)
        ours = harness_side(args.model, length, args.samples, work, compute.name)
        a, b = sum(theirs) / len(theirs), sum(ours) / len(ours)
        sa, sb = stderr(a, len(theirs)), stderr(b, len(ours))
        rows.append((length, len(theirs), a, sa, len(ours), b, sb, abs(a - b) <= 2 * math.hypot(sa, sb)))
    print(f"\nmodel {args.model}, {compute.name}; outputs in {work}")
    print("| max_seq_length | lm-eval niah_single_1 (n) | ours passkey (n) | difference | within 2 SE |")
    print("|---|---|---|---|---|")
    for length, na, a, sa, nb, b, sb, ok in rows:
        print(f"| {length} | {a:.3f} ± {sa:.3f} ({na}) | {b:.3f} ± {sb:.3f} ({nb}) | {b - a:+.3f} | {'yes' if ok else 'no'} |")


if __name__ == "__main__":
    main()
