"""Benchmark: our trainer's tokens/s against the HF ``Trainer``, same model, data and batch (CPU).

Both train the same from-scratch tiny Llama (SmolLM2's 49K vocabulary) on the same packed shards
with the same batch (micro-batch x accumulation), the same autocast dtype (``--dtype auto``: bf16
where the CPU computes it natively, else fp32), gradient checkpointing, AdamW and LR, in this one
process, one after the other. Throughput is the median over steps after a warm-up. MFU = training
FLOPs (3x forward, attention included) / step time / a GEMM peak measured here in that dtype. Each side runs eager and with torch.compile. The ``ratio:`` line is like for like
(both eager); the compiled pairs are printed beside it. Goal: ratio >= 1.3.

    .venv/bin/python bench/train_throughput.py --seq-len 1024 --micro-batch 4 --accum 2 --steps 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2, help="steps excluded from the median")
    ap.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--dtype", default="auto", help="auto (bf16 where native, else fp32), bf16, fp32")
    ap.add_argument("--loss-chunk", type=int, default=1024, help="as TrainConfig.loss_chunk (0: transformers' loss)")
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from harness import flops, models, precision, shapes
    from harness.paths import cache_dir
    from harness.data import build
    from harness.trainer import loop
    from harness.data import shards as shard_io

    L, mb, accum, steps = args.seq_len, args.micro_batch, args.accum, args.steps + args.warmup
    batch_tokens = L * mb * accum
    tok_dir = models.resolve("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    data = cache_dir("data", f"bench-train-{L}")
    build.build(source="embedded", strategy="cut_target", tokens=max(2_000_000, batch_tokens * steps), seq_len=L,
                tokenizer="smollm2-135m", seed=0, out=data)
    compute = precision.resolve(args.dtype, "cpu")
    print(f"dtype {compute.name} ({compute.reason}; CPU flags {' '.join(compute.cpu_flags)})", flush=True)
    peak = flops.measure_peak("cpu", compute.torch_dtype, seconds=1.0)
    config = shapes.config("tiny", tokenizer, L)
    per_seq = flops.train_flops(config, L)

    # -- ours, eager and compiled -------------------------------------------------------------
    def ours(compile_: bool) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = loop.TrainConfig(base="", from_scratch="tiny", data=str(data), seq_len=L, tokens=batch_tokens * steps,
                                   out=str(Path(tmp) / "ours"), lr=1e-3, batch_tokens=batch_tokens, micro_batch=mb,
                                   warmup_steps=1, dtype=compute.name, grad_ckpt=args.grad_ckpt, loss_chunk=args.loss_chunk,
                                   compile=compile_)
            loop.train(cfg)
            secs = [json.loads(x)["seconds"] for x in (Path(tmp) / "ours" / "metrics.jsonl").read_text().splitlines()]
        return statistics.median(secs[args.warmup:])

    # -- HF Trainer on the same shards, model and batch ------------------------------------------
    shards = shard_io.PackedShards(data, L)

    class Packed(torch.utils.data.Dataset):
        def __len__(self):
            return len(shards)

        def __getitem__(self, i):
            ids = torch.tensor(shards.row(shards.index(i, 0))[0][:L])
            return {"input_ids": ids, "labels": ids.clone()}

    class Timer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t)

    def hf(compile_: bool) -> float:
        torch.manual_seed(0)
        model = LlamaForCausalLM(shapes.config("tiny", tokenizer, L))
        timer = Timer()
        with tempfile.TemporaryDirectory() as tmp:
            targs = TrainingArguments(output_dir=tmp, per_device_train_batch_size=mb, gradient_accumulation_steps=accum,
                                      max_steps=steps, learning_rate=1e-3, warmup_steps=1,
                                      lr_scheduler_type="constant_with_warmup", adam_beta2=0.95, weight_decay=0.0,
                                      max_grad_norm=1.0, bf16=compute.name == "bf16", use_cpu=True, gradient_checkpointing=args.grad_ckpt,
                                      gradient_checkpointing_kwargs={"use_reentrant": False}, torch_compile=compile_,
                                      logging_steps=10 ** 6, save_strategy="no", report_to=[], dataloader_num_workers=0,
                                      disable_tqdm=True)
            Trainer(model=model, args=targs, train_dataset=Packed(), callbacks=[timer]).train()
        return statistics.median(timer.times[args.warmup:])

    results = {"HF Trainer": hf(False), "HF Trainer, torch_compile=True": hf(True),
               "harness train": ours(False), "harness train --compile": ours(True)}
    n_params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    print(f"model: tiny Llama {n_params / 1e6:.1f}M params, seq_len {L}, "
          f"batch {mb} x {accum} accumulation = {batch_tokens:,} tokens/step, {compute.name} autocast, "
          f"grad ckpt {'on' if args.grad_ckpt else 'off'}, loss chunk {args.loss_chunk}, "
          f"{args.steps} timed steps after {args.warmup}")
    print(f"{compute.name} GEMM peak measured here: {peak / 1e12:.2f} TFLOP/s")
    for name, secs in results.items():
        print(f"{name}: {batch_tokens / secs:,.0f} tokens/s  MFU {batch_tokens / L * per_seq / secs / peak:.1%}")
    base = results["HF Trainer"]
    print(f"ratio (harness train --compile vs HF Trainer, torch_compile=True): "
          f"{results['HF Trainer, torch_compile=True'] / results['harness train --compile']:.2f}")
    print(f"ratio (harness train --compile vs HF Trainer defaults): {base / results['harness train --compile']:.2f}")
    # The headline is like for like: both eager, same settings.
    print(f"ratio: {base / results['harness train']:.2f}")


if __name__ == "__main__":
    main()
