"""A prepared GPU check: the project's long-context paths on one GPU, phase by phase, in minutes.

    python bench/gpu_check.py --out DIR [--tokenizer DIR] [--haystack FILE] [--data DIR]
    python bench/gpu_check.py --smoke --out DIR      # the same plumbing on CPU at tiny shapes (the tests run it)

Made for an offline GPU machine that has torch, transformers and triton and nothing of ours:
``bench/gpu_bundle.py`` packs what it needs (this project as a wheel, the small wheels it imports,
a tokenizer, a haystack text, packed shards; no weights, no vLLM, no flash-attn) into one
directory of at most 64 MiB, whose ``run.sh`` installs them into the bundle and runs this script.

Phases (each writes ``DIR/<phase>.json`` when it finishes, so a run cut short keeps what it did;
a phase that fails records its error and the next one runs):
- env:   versions, the GPU, which attention runs (never chosen silently), a measured GEMM peak and
         the data-sheet one.
- eval:  a random Llama-2-7B shape (bf16) on a needle grid at 32K/64K/128K x depths 0/50/100
         through the HF backend's prefix tree and preallocated KV cache: per cell seconds, peak
         GiB, reused tokens; the shortest length's cells again one at a time (outputs and answer
         log-probabilities against the tree's); the paper's 40 x 10 grid's time extrapolated from
         the measured cells (a two-term fit: dense and attention FLOPs).
- train: a random TinyLlama-1.1B shape at 16K and 32K, with and without per-document masking,
         3 steps each (torch engine, gradient checkpointing, chunked loss): tokens/s, MFU against
         the data-sheet peak and the measured one (masked work not counted), peak GiB.
- flex:  flex_attention against sdpa on short and odd lengths (40 tokens, under one 128-token block;
         1000 and 4097, a last partial block), whole prompts, packed documents (per-document
         positions) and greedy decoding through the HF backend: finite, max |d logit|, same tokens.
         On CPU the harness pads flex_attention to whole blocks (harness/flex_cpu.py: AVX2's kernel
         is wrong below one block); CUDA's Triton kernel masks a partial block itself: this checks it.
- ds:    one process of DeepSpeed ZeRO-3 (SmolLM2-135M shape, 16K, doc mask), 2 steps, the final
         checkpoint reloaded with from_pretrained and checked.
On one H200 the whole check is planned for at most 8 minutes. ``summary.md`` lists the figures
BENCHMARKS.md records.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

FULL = dict(eval_shape="llama2-7b", lengths=[32768, 65536, 131072], depths=[0, 50, 100], new_tokens=8,
            train_shape="tinyllama-1.1b", train_lengths=[16384, 32768], train_steps=3,
            ds_shape="smollm2-135m", ds_length=16384, ds_steps=2, dtype="bf16",
            flex_shape="smollm2-135m", flex_lengths=[40, 1000, 4097], flex_new_tokens=8, peak_seconds=1.0)
# The smoke is the plumbing at the least work that still runs every path once: one training length (with and
# without the document mask), two flex tokens (the prompt's and one decode step over a 41-token cache; each
# step's offset compiles another flex kernel on CPU), a short GEMM measurement.
SMOKE = dict(eval_shape="tiny", lengths=[256, 512, 1024], depths=[0, 50, 100], new_tokens=4,
             train_shape="tiny", train_lengths=[256], train_steps=2,
             ds_shape="tiny", ds_length=256, ds_steps=2, dtype="auto", flex_shape="tiny", flex_lengths=[40],
             flex_new_tokens=2, peak_seconds=0.25)
PAPER_GRID = dict(preset="paper")   # tasks/needle.yaml: lengths 1000:128000:40, depths 0:100:10
GIB = 1024 ** 3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/gpu-check"), help="where the phases' JSON goes")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: the plumbing, not the figures")
    ap.add_argument("--tokenizer", default="smollm2-135m", help="a tokenizer directory (the bundle's) or smollm2-135m")
    ap.add_argument("--haystack", default="kjv", help="kjv, or a text file (the bundle's)")
    ap.add_argument("--data", default=None, help="packed shards at >= the longest training length (default: built)")
    ap.add_argument("--phases", default="env,eval,train,flex,ds")
    args = ap.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import torch

    from harness.evaluate import quiet_libraries

    quiet_libraries()
    plan = SMOKE if args.smoke else FULL
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    if not args.smoke and device != "cuda":
        print("gpu_check: no CUDA device; run with --smoke for the CPU plumbing check", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = {"args": args, "plan": plan, "device": device, "out": out}
    phases = {"env": env_phase, "eval": eval_phase, "train": train_phase, "flex": flex_phase, "ds": ds_phase}
    failed = 0
    for name in args.phases.split(","):
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            record = {"phase": name, "ok": True, **phases[name](ctx)}
        except Exception as exc:  # a phase's failure is a finding: recorded, and the next phase runs
            failed += 1
            record = {"phase": name, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()[-4000:]}
            print(record["traceback"], file=sys.stderr, flush=True)
        record["seconds"] = round(time.perf_counter() - started, 2)
        ctx[name] = record
        _write(out / f"{name}.json", record)
        print(f"   {name}: {'ok' if record['ok'] else 'FAILED ' + record['error']} ({record['seconds']} s)", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    (out / "summary.md").write_text(summary(ctx))
    print((out / "summary.md").read_text())
    return 1 if failed else 0


def _write(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


# -- env ---------------------------------------------------------------------------------------

def env_phase(ctx) -> dict:
    import importlib.metadata as md
    import importlib.util

    import torch

    from harness import flops, models, precision

    def version(dist):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    device = torch.device(ctx["device"])
    dtype = precision.resolve(ctx["plan"]["dtype"], device).torch_dtype
    record = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
              **{name: version(name) for name in ("transformers", "deepspeed", "triton", "flash-attn", "accelerate")},
              "flash_attn_importable": importlib.util.find_spec("flash_attn") is not None,
              "attention": {"eval": models.attn_implementation(device, "auto"),
                            "train": models.attn_implementation(device, "auto", doc_mask=False),
                            "train_doc_mask": models.attn_implementation(device, "auto", doc_mask=True)},
              "dtype": str(dtype).removeprefix("torch.")}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        record.update(gpu=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)),
                      gpu_memory_gib=round(props.total_memory / GIB, 1))
        spec = flops.spec_peak(record["gpu"], dtype)
        record["spec_peak_tflops"] = spec / 1e12 if spec else None
    measured = flops.measure_peak("cpu" if device.type == "cpu" else str(device), dtype,
                                  seconds=ctx["plan"]["peak_seconds"])
    record["measured_peak_tflops"] = round(measured / 1e12, 3)
    ctx["peaks"] = {"measured": measured, "spec": (record.get("spec_peak_tflops") or 0) * 1e12 or None}
    return record


# -- eval --------------------------------------------------------------------------------------

def eval_phase(ctx) -> dict:
    import torch

    from harness import models
    from harness.backends.hf import HFBackend
    from harness.tasks import haystack, needle

    plan, args, out = ctx["plan"], ctx["args"], ctx["out"]
    loaded = models.load(f"random:{plan['eval_shape']}", dtype=plan["dtype"], device=ctx["device"],
                         tokenizer=args.tokenizer)
    hay = haystack.load(args.haystack)
    cfg = needle.resolve_config(preset=None, lengths=",".join(map(str, plan["lengths"])),
                                depths=",".join(map(str, plan["depths"])), chat=False, haystack=hay,
                                max_new_tokens=plan["new_tokens"], scorer="both", protocol="exact")
    suite = needle.NeedleSuite(cfg, hay, loaded.tokenizer)
    cells = suite.cells()
    requests = [suite.request(c)[0] for c in cells]
    record = {"model": loaded.info["name"], "parameters": loaded.info["parameters"], "dtype": loaded.info["dtype"],
              "attention": loaded.info["attn_implementation"], "new_tokens": plan["new_tokens"], "cells": []}
    kv_per_token = _kv_bytes_per_token(loaded.config, loaded.model.dtype)
    started = time.perf_counter()
    tree = {}
    for index, gen in HFBackend(loaded).generate_many(requests):
        tree[index] = gen
        cell = cells[index]
        record["cells"].append({"length": cell.length, "depth": cell.depth, "tokens": len(requests[index].ids),
                                "seconds": round(gen.seconds, 3), "peak_gib": round(gen.peak_gib, 3),
                                "kv_gib": round(kv_per_token * (len(requests[index].ids) + plan["new_tokens"]) / GIB, 3),
                                "reused_tokens": gen.reused_tokens, "new_tokens": gen.new_tokens})
        _write(out / "eval.partial.json", record)
    record["grid_seconds"] = round(time.perf_counter() - started, 2)
    # The tree against one prompt at a time (the shortest length: every depth branches there).
    shortest = min(plan["lengths"])
    diffs, same = [], 0
    alone_backend = HFBackend(loaded)
    for i, cell in enumerate(cells):
        if cell.length != shortest:
            continue
        ((_, alone),) = alone_backend.generate_many([requests[i]])
        same += alone.token_ids == tree[i].token_ids
        diffs.extend(abs(a - b) for a, b in zip(alone.target_logprobs, tree[i].target_logprobs))
    record["exactness"] = {"length": shortest, "cells": len(plan["depths"]), "identical_outputs": same,
                           "max_abs_logprob_diff": max(diffs) if diffs else None}
    longest = [c for c in record["cells"] if c["length"] == max(plan["lengths"])]
    record["peak_gib_longest"] = max(c["peak_gib"] for c in longest)
    record["paper_grid"] = _extrapolate(record["cells"], loaded.config, suite, hay, loaded.tokenizer, plan)
    (out / "eval.partial.json").unlink(missing_ok=True)
    del loaded, alone_backend
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return record


def _kv_bytes_per_token(config, dtype) -> int:
    import torch

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv * head_dim * torch.finfo(dtype).bits // 8


def _parts(config, start: int, end: int, new: int) -> tuple[float, float]:
    """(dense, attention) forward FLOPs of a cell: its prefill from ``start`` and ``new`` decode steps."""
    from harness import flops

    total = flops.forward_flops(config, start, end) + flops.decode_flops(config, end, new)
    attention = flops.attention_flops(config, start, end) + flops.attention_flops(config, end, end + new)
    return total - attention, attention


def _extrapolate(cells: list[dict], config, suite, hay, tokenizer, plan) -> dict:
    """The paper grid's time on this machine: seconds = a x dense FLOPs + b x attention FLOPs,
    fitted on the measured cells (least squares; one rate when a coefficient comes out negative),
    summed over the paper grid's cells as the prefix tree computes them (Suite.prefill_spans)."""
    from harness.tasks import needle

    new = plan["new_tokens"]
    rows = [_parts(config, c["reused_tokens"], c["tokens"], c["new_tokens"]) for c in cells]
    secs = [c["seconds"] for c in cells]
    sdd = sum(d * d for d, _ in rows)
    saa = sum(a * a for _, a in rows)
    sda = sum(d * a for d, a in rows)
    sdy = sum(d * y for (d, _), y in zip(rows, secs))
    say = sum(a * y for (_, a), y in zip(rows, secs))
    det = sdd * saa - sda * sda
    a = (sdy * saa - say * sda) / det if det else -1
    b = (say * sdd - sdy * sda) / det if det else -1
    if a < 0 or b < 0:  # one effective rate
        rate = sum(secs) / sum(d + at for d, at in rows)
        a = b = rate
        fit = "one rate"
    else:
        fit = "dense + attention"
    paper = needle.resolve_config(preset="paper", lengths=None, depths=None, chat=False, haystack=hay,
                                  max_new_tokens=new, protocol="reference")
    psuite = needle.NeedleSuite(paper, hay, tokenizer)
    pcells = psuite.cells()
    spans = psuite.prefill_spans(pcells)
    seconds = 0.0
    for (start, end) in spans:
        d, at = _parts(config, start, end, new)
        seconds += a * d + b * at
    measured_pred = sum(a * d + b * at for d, at in rows)
    return {"cells": len(pcells), "lengths": len(paper.lengths), "depths": len(paper.depths),
            "new_tokens": new, "fit": fit, "seconds_per_dense_pflop": a * 1e15, "seconds_per_attention_pflop": b * 1e15,
            "fit_error_on_measured": round(measured_pred / sum(secs) - 1, 4),
            "estimated_seconds": round(seconds, 1), "estimated_hours": round(seconds / 3600, 3)}


# -- train -------------------------------------------------------------------------------------

def _shards(ctx, length: int) -> str:
    if ctx["args"].data:
        return ctx["args"].data
    if "shards" not in ctx:
        from harness.data import build

        path = Path(tempfile.mkdtemp(prefix="gpu-check-data-")) / "shards"
        build.build(source="embedded", strategy="cut_4k", tokens=max(16 * length, 65536), seq_len=length,
                    tokenizer=ctx["args"].tokenizer, seed=0, out=path, console=_quiet())
        ctx["shards"] = str(path)
    return ctx["shards"]


def _quiet():
    from rich.console import Console

    return Console(quiet=True)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_phase(ctx) -> dict:
    from harness.trainer import loop

    plan, args = ctx["plan"], ctx["args"]
    data = _shards(ctx, max(plan["train_lengths"] + [plan["ds_length"]]))
    peaks = ctx.get("peaks", {})
    runs = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-train-") as tmp:
        for length in plan["train_lengths"]:
            for doc_mask in (False, True):
                steps = plan["train_steps"]
                cfg = loop.TrainConfig(base="", from_scratch=plan["train_shape"], tokenizer=args.tokenizer, data=data,
                                       seq_len=length, tokens=steps * length, batch_tokens=length, lr=1e-4,
                                       warmup_steps=1, doc_mask=doc_mask, dtype=plan["dtype"],
                                       out=f"{tmp}/{length}-{int(doc_mask)}")
                started = time.perf_counter()
                try:   # one configuration failing (say flex_attention under autocast) is a finding: the next runs
                    loop.train(cfg, console=_quiet(), stop_after=steps)
                except Exception as exc:
                    runs.append({"seq_len": length, "doc_mask": doc_mask, "error": f"{type(exc).__name__}: {exc}"[:2000],
                                 "finite": False})
                    continue
                finally:
                    _free()
                rows = _metrics(Path(cfg.out))
                last = rows[-1]   # the first step compiles kernels (flex_attention) and warms the allocator
                run = {"seq_len": length, "doc_mask": doc_mask, "steps": len(rows), "loss": [r["loss"] for r in rows],
                       "tokens_per_s": round(last["tokens_per_s"], 1), "mfu_stated": round(last["mfu"], 4),
                       "step_seconds": [round(r["seconds"], 3) for r in rows], "peak_gib": max(r["peak_gib"] for r in rows),
                       "wall_seconds": round(time.perf_counter() - started, 1),
                       "finite": all(math.isfinite(r["loss"]) for r in rows)}
                for name, peak in peaks.items():
                    if peak:
                        run[f"mfu_{name}"] = round(last["flops"] / last["seconds"] / peak, 4)
                runs.append(run)
                _write(ctx["out"] / "train.partial.json", {"runs": runs})
    (ctx["out"] / "train.partial.json").unlink(missing_ok=True)
    record = {"shape": plan["train_shape"], "attention": _train_attention(ctx), "runs": runs}
    if not all(r["finite"] for r in runs):
        _write(ctx["out"] / "train.runs.json", record)   # the phase fails, its runs kept
        raise RuntimeError(f"{sum(not r['finite'] for r in runs)} of {len(runs)} runs failed or diverged: "
                           f"{[r.get('error') or r.get('loss') for r in runs if not r['finite']]}")
    return record


def _free() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _train_attention(ctx) -> dict:
    import torch

    from harness import models

    device = torch.device(ctx["device"])
    return {"doc_mask": models.attn_implementation(device, "auto", True), "plain": models.attn_implementation(device)}


# -- flex --------------------------------------------------------------------------------------

def flex_phase(ctx) -> dict:
    """flex_attention against sdpa where a block is short or partial: whole prompts, two packed
    documents, and greedy decoding (one-token queries over an odd-length cache)."""
    import torch

    from harness import models
    from harness.backends.hf import HFBackend
    from harness.data import shards as shard_io

    plan, args = ctx["plan"], ctx["args"]
    loaded = {attn: models.load(f"random:{plan['flex_shape']}", dtype=plan["dtype"], device=ctx["device"],
                                tokenizer=args.tokenizer, attn=attn) for attn in ("sdpa", "flex_attention")}
    loaded["flex_attention"].model.load_state_dict(loaded["sdpa"].model.state_dict())   # the same weights
    config, device = loaded["sdpa"].config, loaded["sdpa"].model.device
    dtype = loaded["sdpa"].model.dtype
    rows = []
    for n in plan["flex_lengths"]:
        ids = torch.randint(100, config.vocab_size - 100, (1, n), device=device)
        halves = [n // 3, n - n // 3]
        pos = shard_io.position_ids(shard_io.Batch(ids.cpu(), [halves]).doc_lens).to(device)
        out = {}
        with torch.inference_mode():
            for attn, m in loaded.items():
                out[attn] = (m.model(input_ids=ids, use_cache=False).logits.float(),
                             m.model(input_ids=ids, position_ids=pos, use_cache=False).logits.float())
        gens = {attn: HFBackend(m).generate(ids[0].tolist(), plan["flex_new_tokens"], stop_at_eos=False).token_ids
                for attn, m in loaded.items()}
        f, s = out["flex_attention"], out["sdpa"]
        rows.append({"length": n, "finite": bool(torch.isfinite(f[0]).all() and torch.isfinite(f[1]).all()),
                     "max_abs_logit_diff": round(float((f[0] - s[0]).abs().max()), 5),
                     "packed_max_abs_logit_diff": round(float((f[1] - s[1]).abs().max()), 5),
                     "same_greedy_tokens": gens["flex_attention"] == gens["sdpa"],
                     "greedy_tokens": len(gens["flex_attention"])})
        print(f"   flex {n}: {rows[-1]}", flush=True)
    return {"shape": plan["flex_shape"], "dtype": str(dtype).removeprefix("torch."), "lengths": rows}


# -- ds ----------------------------------------------------------------------------------------

def ds_phase(ctx) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from harness import shapes
    from harness.trainer import loop

    plan, args = ctx["plan"], ctx["args"]
    length, steps = plan["ds_length"], plan["ds_steps"]
    data = _shards(ctx, max(plan["train_lengths"] + [length]))
    with tempfile.TemporaryDirectory(prefix="gpu-check-ds-") as tmp:
        cfg = loop.TrainConfig(base="", from_scratch=plan["ds_shape"], tokenizer=args.tokenizer, data=data,
                               seq_len=length, tokens=steps * length, batch_tokens=length, lr=1e-4, warmup_steps=1,
                               doc_mask=True, dtype=plan["dtype"], engine="deepspeed", out=f"{tmp}/ds")
        final = loop.train(cfg, console=_quiet())
        rows = _metrics(Path(cfg.out))
        reloaded = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32)
        params = dict(reloaded.named_parameters())
        torch.manual_seed(cfg.seed)   # the trainer's initialisation, again: what the steps started from
        start = LlamaForCausalLM(shapes.config(cfg.from_scratch, _tok(args), length)).state_dict()
        changed = sum(not torch.equal(p, start[n].to(p.dtype)) for n, p in params.items())
        finite = all(torch.isfinite(p).all() for p in params.values())
        files = sorted(p.name for p in Path(final).iterdir())
    if not finite or not changed:
        raise RuntimeError(f"the reloaded checkpoint is {'not finite' if not finite else 'unchanged from its start'}")
    return {"shape": plan["ds_shape"], "seq_len": length, "steps": len(rows), "loss": [r["loss"] for r in rows],
            "tokens_per_s": round(rows[-1]["tokens_per_s"], 1), "peak_gib": max(r["peak_gib"] for r in rows),
            "reloaded_parameters": sum(p.numel() for p in params.values()), "changed_tensors": changed,
            "tensors": len(params), "checkpoint_files": files}


def _tok(args):
    from harness import models

    return models.read_tokenizer(models.locate(args.tokenizer, "--tokenizer"), "--tokenizer")


# -- summary -----------------------------------------------------------------------------------

def summary(ctx) -> str:
    lines = ["# GPU check" + (" (--smoke: CPU plumbing, tiny shapes; the figures mean nothing)" if ctx["args"].smoke else ""), ""]
    env = ctx.get("env", {})
    if env.get("ok"):
        lines.append(f"- {env.get('gpu', 'CPU')}; torch {env['torch']}, transformers {env['transformers']}, deepspeed "
                     f"{env['deepspeed']}; attention: eval {env['attention']['eval']}, doc-mask training "
                     f"{env['attention']['train_doc_mask']}; GEMM peak measured {env['measured_peak_tflops']} TFLOP/s, "
                     f"spec {env.get('spec_peak_tflops') or 'not known'}")
    ev = ctx.get("eval", {})
    if ev.get("ok"):
        lines.append(f"- eval {ev['model']} ({ev['parameters'] / 1e9:.2f}B, {ev['dtype']}, {ev['attention']}): grid "
                     f"{ev['grid_seconds']} s; peak {ev['peak_gib_longest']} GiB at the longest length; exactness "
                     f"{ev['exactness']['identical_outputs']}/{ev['exactness']['cells']} identical outputs, max |d log p| "
                     f"{ev['exactness']['max_abs_logprob_diff']}; paper grid ({ev['paper_grid']['cells']} cells) "
                     f"extrapolated {ev['paper_grid']['estimated_hours']} h ({ev['paper_grid']['fit']})")
        for c in ev["cells"]:
            lines.append(f"  - {c['length']} @ {c['depth']:g}%: {c['seconds']} s, peak {c['peak_gib']} GiB "
                         f"(KV {c['kv_gib']} GiB), reused {c['reused_tokens']}")
    tr = ctx.get("train", {})
    if tr.get("ok"):
        for r in tr["runs"]:
            extra = ", ".join(f"{k} {v}" for k, v in r.items() if k.startswith("mfu_"))
            lines.append(f"- train {tr['shape']} {r['seq_len']} doc-mask {r['doc_mask']}: {r['tokens_per_s']} tok/s, "
                         f"{extra}, peak {r['peak_gib']} GiB, losses {[round(x, 3) for x in r['loss']]}")
    ds = ctx.get("ds", {})
    if ds.get("ok"):
        lines.append(f"- ds ZeRO-3 {ds['shape']} {ds['seq_len']}: {ds['steps']} steps, losses "
                     f"{[round(x, 3) for x in ds['loss']]}, reloaded {ds['changed_tensors']}/{ds['tensors']} tensors changed")
    fx = ctx.get("flex", {})
    if fx.get("ok"):
        for r in fx["lengths"]:
            lines.append(f"- flex vs sdpa {fx['shape']} {fx['dtype']} at {r['length']}: finite {r['finite']}, max |d logit| "
                         f"{r['max_abs_logit_diff']} (packed {r['packed_max_abs_logit_diff']}), same greedy tokens "
                         f"{r['same_greedy_tokens']}")
    for name in ("env", "eval", "train", "flex", "ds"):
        if name in ctx and not ctx[name]["ok"]:
            lines.append(f"- {name} FAILED: {ctx[name]['error']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
