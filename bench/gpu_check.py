"""A prepared GPU check: the project's long-context paths on one GPU, phase by phase, in minutes.

    python bench/gpu_check.py --out DIR [--tokenizer DIR] [--haystack FILE] [--data DIR] [--phases a,b]
    python bench/gpu_check.py --smoke --out DIR      # the same plumbing on CPU at tiny shapes (the tests run it)

Made for an offline GPU machine that has torch, transformers and triton and nothing of ours:
``bench/gpu_bundle.py`` packs what it needs (this project as a wheel, the small wheels it imports,
a tokenizer, a haystack text, packed shards; no weights, no vLLM, no flash-attn) into one
directory of at most 64 MiB, whose ``run.sh`` installs them into the bundle and runs this script.

Every phase's record goes into ``DIR/check.json`` as it finishes (rewritten whole, atomically; a
phase's rows so far are there while it runs), so a run cut short keeps what it did, and the machine
hands back two files (check.json, summary.md), not one per phase. A phase that fails records its
error and the next one runs. Phases (issue #31's figures; the random Llama-2-7B shape is loaded once
for prefill, decode, eval and profile):
- env:     versions, the GPU, which attention runs (never chosen silently), a measured GEMM peak and
           the data-sheet one.
- prefill: one prompt at 32K and 128K: the model's plain forward (``use_cache=False``) against the HF
           backend with ``--prefill-chunk auto``, with 8K chunks, and with 8K chunks on transformers'
           masked kernel (the 2026-12-04 path): seconds, TFLOP/s, the ratio to the plain forward,
           peak GiB, the chunk chosen, the answer log-probability of each (agreement).
- decode:  ms per decoded token at 32K and 128K with flash-decoding's split keys (the default on
           CUDA) and without, against the bandwidth floor (KV + weights read once per token).
- eval:    the needle grid at 32K/64K/128K x depths 0/50/100 with the paper protocol's 50 new tokens
           through the prefix tree: per cell seconds (prefill and decode), peak GiB, reused tokens;
           the shortest length's cells again one at a time (outputs and answer log-probabilities
           against the tree's); the paper's 40 x 10 grid extrapolated at 50 new tokens (prefill
           fitted on dense and attention FLOPs, decode on the measured ms per token by length).
- profile: torch.profiler's top kernels for one prefill chunk continuing a cache and one decode step.
- train:   a random TinyLlama-1.1B shape at 32K, with and without per-document masking (torch
           engine, gradient checkpointing, chunked loss): tokens/s, MFU against the data-sheet
           peak and the measured one (masked work not counted), the first step's seconds, peak GiB;
           the warm-up question (the loss rose above ln V by step 3 on 2026-12-04 with lr 1e-4 after
           one warm-up step): the same run with 10; and the top kernels of one doc-mask step.
- train7b: the Llama-2-7B shape at 32K, 2 steps: the torch engine, else ZeRO-3 with the optimizer
           on the CPU (trainer/ds_zero3_offload.json): which fitted, its MFU and peak.
- flex:    flex_attention against sdpa on short and odd lengths (40 tokens, under one 128-token block;
           1000 and 4097, a last partial block), whole prompts, packed documents (per-document
           positions) and greedy decoding through the HF backend: finite, max |d logit|, same tokens.
           On CPU the harness pads flex_attention to whole blocks (harness/flex_cpu.py: AVX2's kernel
           is wrong below one block); CUDA's Triton kernel masks a partial block itself: this checks it.
- ds:      one process of DeepSpeed ZeRO-3 (SmolLM2-135M shape, 16K, doc mask), 2 steps, the final
           checkpoint reloaded with from_pretrained and checked.
Planned on one H200 as two calls of about 6 minutes each (the default phases, then ``--phases
env,train,train7b,flex,ds``; the machine's 15 minutes include its start); ``summary.md`` lists the
figures BENCHMARKS.md records.
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

FULL = dict(eval_shape="llama2-7b", lengths=[32768, 65536, 131072], depths=[0, 50, 100], new_tokens=50,
            prefill_lengths=[32768, 131072], old_chunk=8192, decode_lengths=[32768, 131072], decode_steps=33,
            profile_context=32768, profile_chunk=8192,
            train_shape="tinyllama-1.1b", train_lengths=[32768], train_steps=4, warmup_check=10,
            big_shape="llama2-7b", big_length=32768, big_steps=2, big_every_engine=False,
            ds_shape="smollm2-135m", ds_length=16384, ds_steps=2, dtype="bf16",
            flex_shape="smollm2-135m", flex_lengths=[40, 1000, 4097], flex_new_tokens=8, peak_seconds=1.0)
# The smoke is the plumbing at the least work that still runs every path once: one training length (with and
# without the document mask), two flex tokens (the prompt's and one decode step over a 41-token cache; each
# step's offset compiles another flex kernel on CPU), a short GEMM measurement.
SMOKE = dict(eval_shape="tiny", lengths=[256, 512, 1024], depths=[0, 50, 100], new_tokens=4,
             prefill_lengths=[1024], old_chunk=256, decode_lengths=[1024], decode_steps=3,
             profile_context=512, profile_chunk=128,
             train_shape="tiny", train_lengths=[256], train_steps=2, warmup_check=None,
             big_shape="tiny", big_length=256, big_steps=1, big_every_engine=True,
             ds_shape="tiny", ds_length=256, ds_steps=2, dtype="auto", flex_shape="tiny", flex_lengths=[40],
             flex_new_tokens=2, peak_seconds=0.25)
PHASES = ("env", "prefill", "decode", "eval", "profile", "train", "train7b", "flex", "ds")
DEFAULT_PHASES = "env,prefill,decode,eval,profile"
SECOND_CALL = "env,train,train7b,flex,ds"    # the training half, as a second call within the machine's budget
EVAL_MODEL_PHASES = {"prefill", "decode", "eval", "profile"}   # they share one load of the eval shape
PAPER_GRID = dict(preset="paper")   # tasks/needle.yaml: lengths 1000:128000:40, depths 0:100:10
GIB = 1024 ** 3
# Memory bandwidth from the data sheets (bytes/s), for the decoding floor.
BANDWIDTH = {"H200": 4.8e12, "H100 SXM": 3.35e12, "H100 NVL": 3.9e12, "H100 PCIe": 2.0e12, "H100": 3.35e12,
             "A100": 2.0e12}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/gpu-check"), help="where check.json goes")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: the plumbing, not the figures")
    ap.add_argument("--tokenizer", default="smollm2-135m", help="a tokenizer directory (the bundle's) or smollm2-135m")
    ap.add_argument("--haystack", default="kjv", help="kjv, or a text file (the bundle's)")
    ap.add_argument("--data", default=None, help="packed shards at >= the longest training length (default: built)")
    ap.add_argument("--phases", default=None, help=f"comma-separated, of {','.join(PHASES)} "
                    f"(default: {DEFAULT_PHASES}; with --smoke: all)")
    args = ap.parse_args(argv)
    names = (args.phases or (",".join(PHASES) if args.smoke else DEFAULT_PHASES)).split(",")
    unknown = [n for n in names if n not in PHASES]
    if unknown:
        print(f"gpu_check: --phases: unknown {', '.join(unknown)}; known: {', '.join(PHASES)}", file=sys.stderr)
        return 2

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
    ctx = {"args": args, "plan": plan, "device": device, "out": out, "records": _previous(out)}
    failed = 0
    for name in names:
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            record = {"phase": name, "ok": True, **globals()[f"{name}_phase"](ctx)}
        except Exception as exc:  # a phase's failure is a finding: recorded, and the next phase runs
            failed += 1
            record = {"phase": name, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()[-4000:], **ctx.pop("partial", {})}
            print(record["traceback"], file=sys.stderr, flush=True)
        ctx.pop("partial", None)
        record["seconds"] = round(time.perf_counter() - started, 2)
        ctx[name] = ctx["records"][name] = record
        _save(ctx)
        print(f"   {name}: {'ok' if record['ok'] else 'FAILED ' + record['error']} ({record['seconds']} s)", flush=True)
        if not set(names[names.index(name) + 1:]) & EVAL_MODEL_PHASES:
            _drop_eval_model(ctx)
        _free()
    (out / "summary.md").write_text(summary(ctx))
    print((out / "summary.md").read_text())
    return 1 if failed else 0


def _previous(out: Path) -> dict:
    """The records an earlier call wrote to the same directory (a second call adds its phases)."""
    path = out / "check.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save(ctx) -> None:
    _write(ctx["out"] / "check.json", ctx["records"])


def _partial(ctx, phase: str, record: dict) -> None:
    """A running phase's rows so far, saved (and kept in the record if the phase then fails)."""
    ctx["partial"] = record
    ctx["records"][phase] = {"phase": phase, "ok": False, "running": True, **record}
    _save(ctx)


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


# -- the eval shape, shared ----------------------------------------------------------------------

def _eval_model(ctx):
    """The random eval shape (bf16 on a GPU), loaded once for the phases that use it."""
    if "eval_model" not in ctx:
        from harness import models

        ctx["eval_model"] = models.load(f"random:{ctx['plan']['eval_shape']}", dtype=ctx["plan"]["dtype"],
                                        device=ctx["device"], tokenizer=ctx["args"].tokenizer)
    return ctx["eval_model"]


def _drop_eval_model(ctx) -> None:
    ctx.pop("eval_model", None)
    _free()


def _ids(loaded, n: int, seed: int = 0):
    """n token ids drawn from the vocabulary (a random model's prompt: content does not matter)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, loaded.config.vocab_size - 100, (n,), generator=g).tolist()


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# -- prefill -----------------------------------------------------------------------------------

def prefill_phase(ctx) -> dict:
    """One prompt per length: the plain forward against the backend's prefill variants."""
    import torch

    from harness import flops
    from harness.backends import Request, attention
    from harness.backends.hf import HFBackend

    plan, device = ctx["plan"], ctx["device"]
    loaded = _eval_model(ctx)
    model, config = loaded.model, loaded.config
    variants = {"auto": lambda: HFBackend(loaded),
                f"chunk{plan['old_chunk']}": lambda: HFBackend(loaded, prefill_chunk=plan["old_chunk"]),
                f"chunk{plan['old_chunk']}_masked": lambda: _masked(HFBackend(loaded, prefill_chunk=plan["old_chunk"]))}
    rows = []
    with torch.inference_mode():
        model(input_ids=torch.tensor([_ids(loaded, 512)], device=model.device), use_cache=False, logits_to_keep=1)
    for length in plan["prefill_lengths"]:
        ids = _ids(loaded, length)
        work = flops.forward_flops(config, 0, length)
        with torch.inference_mode():
            x = torch.tensor([ids], device=model.device)
            _sync(device)
            started = time.perf_counter()
            model(input_ids=x, use_cache=False, logits_to_keep=1)
            _sync(device)
            plain = time.perf_counter() - started
            del x
        _free()
        row = {"length": length, "plain_seconds": round(plain, 3), "plain_tflops": round(work / plain / 1e12, 1)}
        for name, make in variants.items():
            backend = make()
            ((_, gen),) = backend.generate_many([Request(tuple(ids[:-1]), 0, False, target=(ids[-1],))])
            row[name] = {"seconds": round(gen.seconds, 3), "tflops": round(work / gen.seconds / 1e12, 1),
                         "of_plain": round(plain / gen.seconds, 3), "peak_gib": round(gen.peak_gib, 3),
                         "chunk": backend._chunk, "target_logprob": gen.target_logprobs[0]}
            del backend
            _free()
        rows.append(row)
        _partial(ctx, "prefill", {"rows": rows})
        print(f"   prefill {length}: {row}", flush=True)
    return {"model": loaded.info["name"], "dtype": loaded.info["dtype"], "rows": rows, "kernels": attention.chosen()}


def _masked(backend):
    """The backend on transformers' masked attention for continuing chunks (the 2026-12-04 path)."""
    backend._attn, backend._attn_kind = None, "masked"
    return backend


# -- decode ------------------------------------------------------------------------------------

def decode_phase(ctx) -> dict:
    """ms per decoded token by context length, split keys (flash-decoding) and not, against the floor."""
    from harness import flops
    from harness.backends import attention, prefill
    from harness.backends.hf import HFBackend

    plan, device = ctx["plan"], ctx["device"]
    loaded = _eval_model(ctx)
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    kv_token = prefill.kv_bytes_per_token(loaded.config, loaded.model.dtype)
    bandwidth = _bandwidth(ctx)
    steps = plan["decode_steps"]
    saved = dict(attention.SPLIT_KV_MIN)
    rows = []
    try:
        for length in plan["decode_lengths"]:
            ids = _ids(loaded, length, seed=1)
            row = {"length": length, "steps": steps - 1}
            if bandwidth:
                floor = (weights + kv_token * length) / bandwidth
                row["floor_ms"] = round(1e3 * floor, 2)
            tokens = {}
            for name, split_min in (("split", saved.get("cuda", 8192)), ("plain", 1 << 40)):
                attention.SPLIT_KV_MIN[device] = split_min
                gen = HFBackend(loaded).generate(ids, steps, stop_at_eos=False)
                ms = 1e3 * gen.decode_seconds / max(1, gen.new_tokens - 1)
                row[name] = {"ms_per_token": round(ms, 2),
                             "tflops": round(flops.decode_flops(loaded.config, length, 1) / ms * 1e3 / 1e12, 2)}
                if bandwidth:
                    row[name]["of_floor"] = round(ms / row["floor_ms"], 2)
                tokens[name] = gen.token_ids
                _free()
            row["same_tokens"] = tokens["split"] == tokens["plain"]
            row["agreeing_prefix"] = next((i for i, (a, b) in enumerate(zip(tokens["split"], tokens["plain"])) if a != b),
                                          len(tokens["split"]))
            rows.append(row)
            _partial(ctx, "decode", {"rows": rows})
            print(f"   decode {length}: {row}", flush=True)
    finally:
        attention.SPLIT_KV_MIN.clear()
        attention.SPLIT_KV_MIN.update(saved)
    return {"model": loaded.info["name"], "weights_gib": round(weights / GIB, 2), "bandwidth": bandwidth,
            "rows": rows, "kernels": attention.chosen()}


def _bandwidth(ctx) -> float | None:
    """The GPU's data-sheet memory bandwidth (bytes/s), None on a CPU or an unknown part."""
    import torch

    if ctx["device"] != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((bw for part, bw in BANDWIDTH.items() if all(w in name for w in part.split())), None)


# -- eval --------------------------------------------------------------------------------------

def eval_phase(ctx) -> dict:
    from harness.backends import prefill
    from harness.backends.hf import HFBackend
    from harness.tasks import haystack, needle

    plan, args = ctx["plan"], ctx["args"]
    loaded = _eval_model(ctx)
    hay = haystack.load(args.haystack)
    cfg = needle.resolve_config(preset=None, lengths=",".join(map(str, plan["lengths"])),
                                depths=",".join(map(str, plan["depths"])), chat=False, haystack=hay,
                                max_new_tokens=plan["new_tokens"], scorer="both", protocol="exact")
    suite = needle.NeedleSuite(cfg, hay, loaded.tokenizer)
    cells = suite.cells()
    requests = [suite.request(c)[0] for c in cells]
    record = {"model": loaded.info["name"], "parameters": loaded.info["parameters"], "dtype": loaded.info["dtype"],
              "attention": loaded.info["attn_implementation"], "new_tokens": plan["new_tokens"], "cells": []}
    kv_per_token = prefill.kv_bytes_per_token(loaded.config, loaded.model.dtype)
    started = time.perf_counter()
    tree = {}
    for index, gen in HFBackend(loaded).generate_many(requests):
        tree[index] = gen
        cell = cells[index]
        record["cells"].append({"length": cell.length, "depth": cell.depth, "tokens": len(requests[index].ids),
                                "seconds": round(gen.seconds, 3), "decode_seconds": round(gen.decode_seconds or 0, 3),
                                "peak_gib": round(gen.peak_gib, 3),
                                "kv_gib": round(kv_per_token * (len(requests[index].ids) + plan["new_tokens"]) / GIB, 3),
                                "reused_tokens": gen.reused_tokens, "new_tokens": gen.new_tokens})
        _partial(ctx, "eval", record)
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
    record["paper_grid"] = _extrapolate(record["cells"], loaded.config, hay, loaded.tokenizer, plan)
    return record


def _prefill_parts(config, start: int, end: int) -> tuple[float, float]:
    """(dense, attention) forward FLOPs of a prefill from ``start`` cached tokens to ``end``."""
    from harness import flops

    attention = flops.attention_flops(config, start, end)
    return flops.forward_flops(config, start, end) - attention, attention


def _fit2(xs: list[tuple[float, float]], ys: list[float]) -> tuple[float, float, str]:
    """y = a x0 + b x1 by least squares, both non-negative (else one rate for x0 + x1)."""
    s00 = sum(x0 * x0 for x0, _ in xs)
    s11 = sum(x1 * x1 for _, x1 in xs)
    s01 = sum(x0 * x1 for x0, x1 in xs)
    s0y = sum(x0 * y for (x0, _), y in zip(xs, ys))
    s1y = sum(x1 * y for (_, x1), y in zip(xs, ys))
    det = s00 * s11 - s01 * s01
    a = (s0y * s11 - s1y * s01) / det if det else -1
    b = (s1y * s00 - s0y * s01) / det if det else -1
    if a < 0 or b < 0:
        rate = sum(ys) / max(sum(x0 + x1 for x0, x1 in xs), 1e-30)
        return rate, rate, "one rate"
    return a, b, "two terms"


def _extrapolate(cells: list[dict], config, hay, tokenizer, plan) -> dict:
    """The paper grid's time on this machine at the paper protocol's 50 new tokens: each cell's
    prefill as the prefix tree computes it (Suite.prefill_spans), fitted as a x dense FLOPs + b x
    attention FLOPs on the measured cells' prefill seconds, plus 49 decode steps per cell at
    c + d x context seconds each, fitted on the measured cells' decode seconds (decoding is
    memory-bound: FLOPs do not price it). An upper bound where a model stops at EOS earlier."""
    from harness.tasks import needle

    new = 50
    prefill = [_prefill_parts(config, c["reused_tokens"], c["tokens"]) for c in cells]
    p_secs = [c["seconds"] - c["decode_seconds"] for c in cells]
    a, b, prefill_fit = _fit2(prefill, p_secs)
    steps = [(c["new_tokens"] - 1, (c["new_tokens"] - 1) * c["tokens"]) for c in cells]
    c0, c1, decode_fit = _fit2(steps, [c["decode_seconds"] for c in cells])
    paper = needle.resolve_config(preset="paper", lengths=None, depths=None, chat=False, haystack=hay,
                                  max_new_tokens=new, protocol="reference")
    psuite = needle.NeedleSuite(paper, hay, tokenizer)
    pcells = psuite.cells()
    prefill_s = decode_s = 0.0
    for (start, end) in psuite.prefill_spans(pcells):
        dense, attention = _prefill_parts(config, start, end)
        prefill_s += a * dense + b * attention
        decode_s += (new - 1) * (c0 + c1 * end)
    measured = sum(a * d + b * at for d, at in prefill) + sum(c0 * n + c1 * nt for n, nt in steps)
    return {"cells": len(pcells), "lengths": len(paper.lengths), "depths": len(paper.depths), "new_tokens": new,
            "prefill_fit": prefill_fit, "seconds_per_dense_pflop": a * 1e15, "seconds_per_attention_pflop": b * 1e15,
            "decode_fit": decode_fit, "decode_ms_at_128k": round(1e3 * (c0 + c1 * 131072), 2),
            "fit_error_on_measured": round(measured / sum(c["seconds"] for c in cells) - 1, 4),
            "prefill_seconds": round(prefill_s, 1), "decode_seconds": round(decode_s, 1),
            "estimated_seconds": round(prefill_s + decode_s, 1), "estimated_hours": round((prefill_s + decode_s) / 3600, 3)}


# -- profile -----------------------------------------------------------------------------------

def profile_phase(ctx) -> dict:
    """torch.profiler's top kernels: one prefill chunk continuing a cache and one decode step (the
    eval shape, through the HF backend's forward and attention)."""
    import torch

    from harness import profiling
    from harness.backends.hf import HFBackend
    from harness.backends.kv_cache import PreallocatedCache

    plan, device = ctx["plan"], ctx["device"]
    loaded = _eval_model(ctx)
    context, chunk = plan["profile_context"], plan["profile_chunk"]
    backend = HFBackend(loaded)
    x = torch.tensor([_ids(loaded, context + 1)], device=loaded.model.device)
    record = {"context": context, "chunk": chunk}
    with backend._attention(), torch.inference_mode():
        cache = PreallocatedCache(loaded.config, context + 2)
        backend._forward(input_ids=x[:, :context - chunk], cache=cache, use_cache=True, logits_to_keep=1)
        record["prefill_chunk"] = profiling.top_kernels(
            lambda: backend._forward(input_ids=x[:, context - chunk:context], cache=cache, use_cache=True,
                                     logits_to_keep=1), device)
        backend._forward(input_ids=x[:, context:context + 1], cache=cache, use_cache=True, logits_to_keep=1)
        cache.crop(-1)
        record["decode_step"] = profiling.top_kernels(
            lambda: backend._forward(input_ids=x[:, context:context + 1], cache=cache, use_cache=True,
                                     logits_to_keep=1), device)
    return record


def _profile_train_step(ctx) -> list[dict]:
    """One optimizer step of the train shape at the longest training length with the document mask
    (torch engine, gradient checkpointing, chunked loss), after one unprofiled step (compilation)."""
    import torch
    from transformers import LlamaForCausalLM

    from harness import models, precision, profiling, shapes
    from harness.data import shards as shard_io
    from harness.trainer.engines import TorchEngine

    plan, args = ctx["plan"], ctx["args"]
    length = max(plan["train_lengths"])
    device = torch.device(ctx["device"])
    config = shapes.config(plan["train_shape"], _tok(args), length)
    config._attn_implementation = models.attn_implementation(device, "auto", True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    dtype = precision.resolve(plan["dtype"], device).torch_dtype
    engine = TorchEngine(model, lr=1e-5, weight_decay=0.0, warmup=10, accum=1, clip=1.0, dtype=dtype, device=device,
                         world=1)
    data = shard_io.PackedShards(Path(_shards(ctx, length)), length)
    batch = data.batch(0, 1, 0)

    def step():
        engine.backward(batch.input_ids, shard_io.labels(batch, True), shard_io.position_ids(batch.doc_lens))
        engine.step()
        _sync(device)

    step()
    rows = profiling.top_kernels(step, ctx["device"])
    del engine, model
    _free()
    return rows


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
    """The train shape at each training length, with and without the document mask; then, where the
    plan asks, the same without the mask and with a 10-step warm-up (the loss-rise question)."""
    plan = ctx["plan"]
    configs = [(length, doc_mask, 1) for length in plan["train_lengths"] for doc_mask in (False, True)]
    if plan["warmup_check"]:
        configs.append((max(plan["train_lengths"]), False, plan["warmup_check"]))
    runs = []
    for length, doc_mask, warmup in configs:
        runs.append(_train_run(ctx, plan["train_shape"], length, doc_mask, plan["train_steps"], warmup))
        _partial(ctx, "train", {"runs": runs})
    record = {"shape": plan["train_shape"], "attention": _train_attention(ctx), "runs": runs,
              "profile": _profile_train_step(ctx)}
    if not all(r["finite"] for r in runs):
        raise RuntimeError(f"{sum(not r['finite'] for r in runs)} of {len(runs)} runs failed or diverged: "
                           f"{[r.get('error') or r.get('loss') for r in runs if not r['finite']]}")
    return record


def train7b_phase(ctx) -> dict:
    """The big shape at its length: the torch engine first; if it does not fit, ZeRO-3 with the
    optimizer's state and step on the CPU (one process)."""
    plan = ctx["plan"]
    runs = []
    for engine, ds_config in (("torch", None), ("deepspeed", _offload_config())):
        run = _train_run(ctx, plan["big_shape"], plan["big_length"], False, plan["big_steps"], 1, engine, ds_config)
        runs.append(run)
        _partial(ctx, "train7b", {"runs": runs})
        if run["finite"] and not plan["big_every_engine"]:   # the smoke runs both: the offload path too
            break
    if not all(r["finite"] for r in runs) if plan["big_every_engine"] else not runs[-1]["finite"]:
        raise RuntimeError(f"no engine trained the {plan['big_shape']} shape: {[r.get('error') for r in runs]}")
    return {"shape": plan["big_shape"], "runs": runs, "fitted": next(r["engine"] for r in runs if r["finite"])}


def _offload_config() -> str:
    from harness.trainer import engines

    return str(Path(engines.__file__).with_name("ds_zero3_offload.json"))


def _train_run(ctx, shape: str, length: int, doc_mask: bool, steps: int, warmup: int, engine: str = "torch",
               ds_config: str | None = None) -> dict:
    """One short from-scratch run through the trainer: its metrics, or the error it stopped with."""
    from harness.trainer import loop

    plan, args = ctx["plan"], ctx["args"]
    data = _shards(ctx, max(plan["train_lengths"] + [plan["ds_length"], plan["big_length"]]))
    head = {"shape": shape, "seq_len": length, "doc_mask": doc_mask, "warmup_steps": warmup, "engine": engine}
    with tempfile.TemporaryDirectory(prefix="gpu-check-train-") as tmp:
        cfg = loop.TrainConfig(base="", from_scratch=shape, tokenizer=args.tokenizer, data=data, seq_len=length,
                               tokens=steps * length, batch_tokens=length, lr=1e-4, warmup_steps=warmup,
                               doc_mask=doc_mask, dtype=plan["dtype"], engine=engine, deepspeed_config=ds_config,
                               out=f"{tmp}/run")
        started = time.perf_counter()
        counters = _compile_counters()
        try:   # one configuration failing (say flex_attention under autocast) is a finding: the next runs
            loop.train(cfg, console=_quiet(), stop_after=steps)
        except Exception as exc:
            return {**head, "error": f"{type(exc).__name__}: {exc}"[:2000], "finite": False}
        finally:
            _free()
        rows = _metrics(Path(cfg.out))
    last = rows[-1]   # the first step compiles kernels (flex_attention) and warms the allocator
    run = {**head, "steps": len(rows), "loss": [r["loss"] for r in rows], "lr": [r.get("lr") for r in rows],
           "tokens_per_s": round(last["tokens_per_s"], 1), "mfu_stated": round(last["mfu"], 4),
           "step_seconds": [round(r["seconds"], 3) for r in rows], "first_step_seconds": round(rows[0]["seconds"], 2),
           "peak_gib": max(r["peak_gib"] for r in rows), "wall_seconds": round(time.perf_counter() - started, 1),
           "finite": all(math.isfinite(r["loss"]) for r in rows), "compiled": counters()}
    for name, peak in _peaks(ctx).items():
        if peak:
            run[f"mfu_{name}"] = round(last["flops"] / last["seconds"] / peak, 4)
    return run


def _compile_counters():
    """Zero dynamo's counters; the returned function reads what compiled since: graphs (one per
    shape is the aim: tests/test_compile_once.py), recompilations, and compile seconds by part."""
    import torch._dynamo.utils as dynamo

    dynamo.counters.clear()

    def read() -> dict:
        try:
            spent = {k: round(v, 2) for k, v in dynamo.calculate_time_spent().items()}
        except Exception:   # its shape changes between torch versions: the counts still stand
            spent = {}
        return {"unique_graphs": dynamo.counters["stats"]["unique_graphs"],
                "recompiles": sum(dynamo.counters["recompiles"].values()), "seconds": spent}
    return read


def _peaks(ctx) -> dict:
    """The env phase's peaks (this call's, or an earlier call's record in the same directory)."""
    env = ctx["records"].get("env", {})
    return ctx.get("peaks") or {"measured": env.get("measured_peak_tflops", 0) * 1e12 or None,
                                "spec": (env.get("spec_peak_tflops") or 0) * 1e12 or None}


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
    """The figures BENCHMARKS.md records, from every record in check.json (this call's and earlier ones')."""
    rec = ctx["records"]
    lines = ["# GPU check" + (" (--smoke: CPU plumbing, tiny shapes; the figures mean nothing)" if ctx["args"].smoke else ""), ""]
    env = rec.get("env", {})
    if env.get("ok"):
        lines.append(f"- {env.get('gpu', 'CPU')}; torch {env['torch']}, transformers {env['transformers']}, deepspeed "
                     f"{env['deepspeed']}; attention: eval {env['attention']['eval']}, doc-mask training "
                     f"{env['attention']['train_doc_mask']}; GEMM peak measured {env['measured_peak_tflops']} TFLOP/s, "
                     f"spec {env.get('spec_peak_tflops') or 'not known'}")
    for phase, line in (("prefill", _prefill_lines), ("decode", _decode_lines), ("eval", _eval_lines),
                        ("profile", _profile_lines), ("train", _train_lines), ("train7b", _train_lines),
                        ("flex", _flex_lines), ("ds", _ds_lines)):
        if rec.get(phase, {}).get("ok"):
            lines.extend(line(rec[phase]))
    for name in PHASES:
        if name in rec and not rec[name]["ok"]:
            lines.append(f"- {name} FAILED: {rec[name].get('error', 'cut short while running')}")
    return "\n".join(lines) + "\n"


def _prefill_lines(pf) -> list[str]:
    out = [f"- prefill {pf['model']} ({pf['dtype']}); continuation kernels {pf['kernels']}"]
    for r in pf["rows"]:
        variants = "; ".join(f"{k} {v['seconds']} s = {v['tflops']} TFLOP/s ({v['of_plain']} of plain, chunk {v['chunk']}, "
                             f"peak {v['peak_gib']} GiB)" for k, v in r.items() if isinstance(v, dict))
        out.append(f"  - {r['length']}: plain forward {r['plain_seconds']} s = {r['plain_tflops']} TFLOP/s; {variants}")
    return out


def _decode_lines(dc) -> list[str]:
    out = [f"- decode {dc['model']} (weights {dc['weights_gib']} GiB, bandwidth {dc['bandwidth']}); kernels {dc['kernels']}"]
    for r in dc["rows"]:
        floor = f"floor {r['floor_ms']} ms; " if "floor_ms" in r else ""
        out.append(f"  - {r['length']}: {floor}split {r['split']['ms_per_token']} ms/token "
                   f"({r['split'].get('of_floor', '-')}x floor), plain {r['plain']['ms_per_token']} ms/token "
                   f"({r['plain'].get('of_floor', '-')}x); same tokens {r['same_tokens']} (first {r['agreeing_prefix']} agree)")
    return out


def _eval_lines(ev) -> list[str]:
    grid = ev["paper_grid"]
    out = [f"- eval {ev['model']} ({ev['parameters'] / 1e9:.2f}B, {ev['dtype']}, {ev['attention']}): grid "
           f"{ev['grid_seconds']} s at {ev['new_tokens']} new tokens; peak {ev['peak_gib_longest']} GiB at the longest "
           f"length; exactness {ev['exactness']['identical_outputs']}/{ev['exactness']['cells']} identical outputs, max "
           f"|d log p| {ev['exactness']['max_abs_logprob_diff']}; paper grid ({grid['cells']} cells) at "
           f"{grid['new_tokens']} new tokens extrapolated {grid['estimated_hours']} h (prefill {grid['prefill_seconds']} s, "
           f"decode {grid['decode_seconds']} s; fit error on the measured cells {grid['fit_error_on_measured']})"]
    for c in ev["cells"]:
        out.append(f"  - {c['length']} @ {c['depth']:g}%: {c['seconds']} s (decode {c['decode_seconds']} s), peak "
                   f"{c['peak_gib']} GiB (KV {c['kv_gib']} GiB), reused {c['reused_tokens']}")
    return out


def _profile_lines(pr) -> list[str]:
    out = [f"- profile (context {pr['context']}, chunk {pr['chunk']}), top kernels:"]
    for part in ("prefill_chunk", "decode_step"):
        top = ", ".join(f"{r['name'][:48]} {r.get('share_pct', '?')}%" for r in pr[part][:3])
        out.append(f"  - {part}: {top}")
    return out


def _train_lines(tr) -> list[str]:
    out = []
    if tr.get("profile"):
        out.append("- train step (doc mask), top kernels: " + ", ".join(
            f"{r['name'][:48]} {r.get('share_pct', '?')}%" for r in tr["profile"][:3]))
    for r in tr["runs"]:
        if not r["finite"]:
            out.append(f"- train {r['shape']} {r['seq_len']} {r['engine']}: {r.get('error') or r.get('loss')}")
            continue
        extra = ", ".join(f"{k} {v}" for k, v in r.items() if k.startswith("mfu_"))
        out.append(f"- train {r['shape']} {r['seq_len']} doc-mask {r['doc_mask']} warm-up {r['warmup_steps']} "
                   f"{r['engine']}: {r['tokens_per_s']} tok/s, {extra}, first step {r['first_step_seconds']} s "
                   f"({r['compiled']['unique_graphs']} graphs compiled), lr {r['lr']}, "
                   f"peak {r['peak_gib']} GiB, losses {[round(x, 3) for x in r['loss']]}")
    return out


def _flex_lines(fx) -> list[str]:
    return [f"- flex vs sdpa {fx['shape']} {fx['dtype']} at {r['length']}: finite {r['finite']}, max |d logit| "
            f"{r['max_abs_logit_diff']} (packed {r['packed_max_abs_logit_diff']}), same greedy tokens "
            f"{r['same_greedy_tokens']}" for r in fx["lengths"]]


def _ds_lines(ds) -> list[str]:
    return [f"- ds ZeRO-3 {ds['shape']} {ds['seq_len']}: {ds['steps']} steps, losses "
            f"{[round(x, 3) for x in ds['loss']]}, reloaded {ds['changed_tensors']}/{ds['tensors']} tensors changed"]


if __name__ == "__main__":
    sys.exit(main())
