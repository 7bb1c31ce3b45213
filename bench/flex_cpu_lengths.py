"""Which sequence lengths inductor's CPU flex_attention gets wrong, against sdpa, in one process.

    python bench/flex_cpu_lengths.py                      # this CPU's own kernels
    ATEN_CPU_CAPABILITY=avx2 TORCHINDUCTOR_CACHE_DIR=/tmp/ti-avx2 python bench/flex_cpu_lengths.py
    python bench/flex_cpu_lengths.py --padded             # through harness.flex_cpu's padding

Each length is compiled afresh with static shapes (causal, 4 query heads over 2 key heads, head dim
16, fp32) and its max |flex - sdpa| printed; "wrong" past 1e-4. The padded run goes through the
block-multiple padding the harness installs for CPU (harness/flex_cpu.py).
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="8,16,24,32,40,48,56,63,64,65,72,96,120,127,128,129,136,200,256")
    ap.add_argument("--padded", action="store_true", help="pad to whole blocks as harness.flex_cpu does")
    args = ap.parse_args()
    import torch._dynamo
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from harness import flex_cpu

    print("ATen capability", torch.backends.cpu.get_cpu_capability(), "| torch", torch.__version__)
    causal = lambda b, h, q, kv: q >= kv  # noqa: E731
    wrong = []
    for n in (int(x) for x in args.lengths.split(",")):
        torch._dynamo.reset()
        torch.manual_seed(0)
        q, k = torch.randn(1, 4, n, 16), torch.randn(1, 2, n, 16)
        v = torch.randn_like(k)
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        mask = create_block_mask(causal, 1, None, n, n, device="cpu")
        run = torch.compile(flex_attention, dynamic=False)
        if args.padded:
            p = flex_cpu._round_up(n)
            pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, p - n))  # noqa: E731
            out = run(pad(q), pad(k), pad(v), block_mask=flex_cpu.padded_mask(mask, n, n), enable_gqa=True)[:, :, :n]
        else:
            out = run(q, k, v, block_mask=mask, enable_gqa=True)
        err = (out - ref).abs().max().item()
        wrong += [n] if not err < 1e-4 else []
        print(f"{n:5d}  max|flex - sdpa| = {err:.3g}")
    print("wrong at:", wrong or "none")


if __name__ == "__main__":
    main()
