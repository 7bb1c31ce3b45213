"""Benchmark: a needle grid through our engine against the per-cell `generate` baseline.

One process, one model, one grid, the same prompts. The baseline evaluates each cell the way
NIAH and the seed repo do: the cell's prompt encoded from scratch and `model.generate` (greedy,
50 new tokens, no EOS stop). Ours: `HFBackend.generate_many` over every cell (a
depth-first walk of the prompts' prefix tree with one KV cache: the haystack is computed once and
each cell computes only its branch after its needle; cells of one length decode as a batch). Both are greedy with 50 new tokens and no
EOS stop. `--fast` (split-causal attention, batched decoding) runs as a second pass. Printed:
whether the outputs (and so the scores) are identical; the wall-time ratio (goal >= 1.5); the grid's exact-output FLOP floor (trunk once + every branch + decoding) and our
achieved FLOP/s against a bf16 GEMM peak measured in the same run (goal >= 50%); and the peak RSS
of our pass at the longest length (goal <= 4 GB). The last line is `ratio: X`.

    .venv/bin/python bench/needle_grid.py --lengths 1k,2k,4k,6k,8k --depths 0,25,50,75,100
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="1k,2k,4k,6k,8k")
    ap.add_argument("--depths", default="0,25,50,75,100")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 where native, else fp32), bf16, fp32")
    ap.add_argument("--new-tokens", type=int, default=50)
    args = ap.parse_args()

    import torch

    from harness import flops, models
    from harness.memory import PeakMemory
    from harness.backends import Request
    from harness.backends.hf import HFBackend, _common_prefix
    from harness.tasks import haystack, needle

    loaded = models.load(args.model, dtype=args.dtype)
    hay = haystack.load("kjv")
    cfg = needle.resolve_config(preset=None, lengths=args.lengths, depths=args.depths, chat=False, haystack=hay,
                                protocol="exact",
                                max_new_tokens=args.new_tokens)
    suite = needle.NeedleSuite(cfg, hay, loaded.tokenizer)
    cells = suite.cells()
    built = [suite.request(c) for c in cells]
    requests = [Request(req.ids, args.new_tokens, False) for req, *_ in built]
    config = loaded.config
    print(f"{loaded.info['name']} {loaded.info['dtype']} ({loaded.info['precision']['reason']}; CPU flags "
          f"{' '.join(loaded.info['precision']['cpu_flags'])}) · {len(cells)} cells · lengths {args.lengths} · "
          f"depths {args.depths} · {sum(len(r.ids) for r in requests):,} prompt tokens · "
          f"{torch.get_num_threads()} threads")

    # The exact-output floor: every edge of the prefix tree once, one logit row per prefill, and
    # the decode steps (the last of the 50 tokens is never fed back).
    order = sorted(range(len(requests)), key=lambda i: requests[i].ids)
    held: tuple = ()
    floor = 0.0
    for i in order:
        ids = requests[i].ids
        keep = min(_common_prefix(list(held), list(ids)), len(ids) - 1)
        floor += flops.forward_flops(config, keep, len(ids), logits=1)
        floor += flops.forward_flops(config, len(ids), len(ids) + args.new_tokens - 1, logits=args.new_tokens - 1)
        held = ids
    per_cell = sum(flops.forward_flops(config, 0, len(r.ids)) + flops.forward_flops(
        config, len(r.ids), len(r.ids) + args.new_tokens - 1, logits=args.new_tokens - 1) for r in requests)
    peak = flops.measure_peak("cpu", getattr(torch, loaded.info["dtype"]), seconds=2.0)

    memory = PeakMemory("cpu")
    memory.reset()
    t0 = time.perf_counter()
    ours = dict(HFBackend(loaded).generate_many(requests))
    t_ours = time.perf_counter() - t0
    rss_ours = memory.gib()
    memory.reset()
    t0 = time.perf_counter()
    fast = dict(HFBackend(loaded, fast=True).generate_many(requests))
    t_fast = time.perf_counter() - t0
    rss_fast = memory.gib()

    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    model, tok = loaded.model, loaded.tokenizer
    # Greedy, exactly 50 tokens, no EOS stop (as our base-prompt decoding: see README "Choices").
    # (eos_token_id=None would fall back to the model's EOS; -1 is a token that never comes.)
    greedy = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=-1,
                              pad_token_id=tok.eos_token_id)
    base_text = {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i, r in enumerate(requests):
            out = model.generate(torch.tensor([r.ids]), generation_config=greedy)
            base_text[i] = tok.decode(out[0, len(r.ids):], skip_special_tokens=True).strip()
    t_base = time.perf_counter() - t0

    def agreement(got: dict) -> str:
        same = sum(got[i].text == base_text[i] for i in range(len(requests)))
        scores = sum(suite.score(got[i].text, built[i][1]) == suite.score(base_text[i], built[i][1])
                     for i in range(len(requests)))
        mean = sum(suite.score(got[i].text, built[i][1])["paper"] for i in got) / len(got)
        return f"identical outputs {same}/{len(requests)}, identical per-cell scores {scores}/{len(requests)}, mean {mean:.3f}"

    mean_base = sum(suite.score(base_text[i], built[i][1])["paper"] for i in base_text) / len(base_text)
    print(f"baseline (per-cell generate): {t_base:,.1f} s, mean paper score {mean_base:.3f}")
    print(f"ours, exact (prefix tree):    {t_ours:,.1f} s ({t_base / t_ours:.2f}x); {agreement(ours)}")
    print(f"ours, --fast (split attention, batched decoding): {t_fast:,.1f} s ({t_base / t_fast:.2f}x); {agreement(fast)}")
    print(f"FLOP: per-cell work {per_cell / 1e12:,.2f} TFLOP; exact-output floor {floor / 1e12:,.2f} TFLOP "
          f"({per_cell / floor:.2f}x less)")
    for name, seconds in (("exact", t_ours), ("--fast", t_fast)):
        print(f"achieved ({name}): {floor / seconds / 1e12:.3f} TFLOP/s of the floor = {floor / seconds / peak:.1%} of "
              f"the measured {loaded.info['dtype']} GEMM peak {peak / 1e12:.3f} TFLOP/s (goal >= 50%)")
    print(f"peak RSS (max length {max(cfg.lengths):,}; {memory.kind}): exact pass {rss_ours:.2f} GiB, --fast pass "
          f"{rss_fast:.2f} GiB (goal <= 4)")
    print(f"ratio: {t_base / t_ours:.2f}")


if __name__ == "__main__":
    main()
