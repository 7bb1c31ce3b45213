"""The prefill chunk sized by the device (harness/backends/prefill.py), driven by fake free-memory
figures, and the continuation attention's kernel fallback (harness/backends/attention.py)."""

from __future__ import annotations

import pytest
import torch

from harness import shapes
from harness.backends import Request, attention, prefill
from harness.backends.hf import HFBackend
from harness.errors import UserError

GIB = 1024 ** 3


@pytest.fixture(scope="module")
def llama7b(tokenizer):
    return shapes.config("llama2-7b", tokenizer, 131072)


def test_the_memory_model_covers_the_measured_128k_prefill(llama7b):
    """One H200, 2026-12-04: a whole 131,072-token prompt of the 7B shape in bf16 peaked at 89.0 GiB,
    64.0 of it KV and 12.6 the weights: about 12.4 GiB of activations. The model must not be below
    that (a chunk it allows would not fit), nor far above (it would chunk what fits)."""
    estimate = prefill.activation_bytes(llama7b, torch.bfloat16, 131072, 0, "prefix") / GIB
    assert 12.4 <= estimate <= 12.4 * 1.25
    assert prefill.kv_bytes_per_token(llama7b, torch.bfloat16) * 131072 == 64 * GIB


def test_auto_chunk_is_the_whole_prompt_where_it_fits_else_the_largest_that_does(llama7b):
    kv = prefill.kv_bytes_per_token(llama7b, torch.bfloat16) * (131072 + 50)
    # An H200 (about 139 GiB usable, 12.6 of it the weights): the 128K prompt in one forward.
    assert prefill.choose(llama7b, torch.bfloat16, 131072, 0, free=126 * GIB, pending=kv) == 131072
    # An H100 (about 78 GiB): the KV cache leaves about 1.4 GiB, so chunks.
    chunk = prefill.choose(llama7b, torch.bfloat16, 131072, 0, free=66 * GIB, pending=kv)
    budget = prefill.HEADROOM * (66 * GIB - kv)
    assert chunk % prefill.MIN_CHUNK == 0 and prefill.MIN_CHUNK <= chunk < 131072
    assert prefill.activation_bytes(llama7b, torch.bfloat16, chunk, 131072 - chunk, "prefix") <= budget
    assert prefill.activation_bytes(llama7b, torch.bfloat16, chunk + prefill.MIN_CHUNK,
                                    131072 - chunk - prefill.MIN_CHUNK, "prefix") > budget
    # A materialised [q, past + q] mask (transformers' sdpa path) costs room: never a larger chunk.
    masked = prefill.choose(llama7b, torch.bfloat16, 131072, 0, free=66 * GIB, pending=kv, attention="masked")
    assert masked < chunk
    # Nothing fits: the smallest chunk (running out of memory is then the cell's fault, harness.oom).
    assert prefill.choose(llama7b, torch.bfloat16, 131072, 0, free=kv, pending=kv) == prefill.MIN_CHUNK


def _forward_lengths(model) -> list[int]:
    seen: list[int] = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_ids"].shape[1]),
                                    with_kwargs=True)
    return seen


def test_the_backend_sizes_its_chunks_from_the_free_memory_figure(tiny_model_dir):
    """On a CPU with a free-memory figure given, ``auto`` chunks a prompt as prefill.choose says, and
    the outputs are those of a fixed chunk of that size; with room for it, the prompt goes whole."""
    from harness import models

    loaded = models.load(str(tiny_model_dir), dtype="fp32")
    config, dtype = loaded.model.config, loaded.model.dtype
    prompt = tuple(range(100, 1300))   # 1,200 tokens
    per = prefill.activation_bytes(config, dtype, 512, 688, "masked")
    tight = int(per / prefill.HEADROOM) + 1    # room for a 512-token chunk at the end, not 1,024
    expected = prefill.choose(config, dtype, len(prompt), 0, tight)
    assert expected == 512
    seen = _forward_lengths(loaded.model)
    auto = dict(HFBackend(loaded, free_memory=lambda: tight).generate_many([Request(prompt, 4, False)]))
    assert seen[:3] == [512, 512, 176] and all(n == 1 for n in seen[3:])
    fixed = dict(HFBackend(loaded, prefill_chunk=512).generate_many([Request(prompt, 4, False)]))
    assert auto[0].token_ids == fixed[0].token_ids
    seen.clear()
    dict(HFBackend(loaded, free_memory=lambda: 64 * GIB).generate_many([Request(prompt, 4, False)]))
    assert seen[0] == len(prompt)
    seen.clear()
    dict(HFBackend(loaded).generate_many([Request(prompt, 4, False)]))   # CPU, no figure: the fixed 8k
    assert seen[0] == len(prompt) and prefill.CPU_CHUNK == 8192


def test_prefill_chunk_flag():
    assert prefill.parse_chunk("auto") == "auto" and prefill.parse_chunk("8k") == 8192
    with pytest.raises(UserError, match="--prefill-chunk: '0' is not auto or a positive number of tokens"):
        prefill.parse_chunk("0")


def test_prefill_chunk_keys_a_run_only_when_given():
    """Run directories made before the flag existed keep their key; a chunk given is part of it."""
    from harness.evaluate import request_from_flags

    plain = request_from_flags(suites="needle").flat()
    assert "prefill_chunk" not in plain
    assert request_from_flags(suites="needle", prefill_chunk="8k").flat()["prefill_chunk"] == "8k"


def test_a_kernel_that_refuses_the_shapes_falls_back_to_the_masked_one(monkeypatch):
    """On CUDA the kernels are tried in order (cuDNN, flash, memory-efficient); one that raises for
    these shapes is skipped, and where none runs, sdpa with the lower-right mask gives the answer."""
    import torch.nn.functional as F
    from torch.nn.attention.bias import causal_lower_right

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 24, 16), torch.randn(1, 4, 64, 16), torch.randn(1, 4, 64, 16)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(24, 64)).transpose(1, 2)
    monkeypatch.setattr(attention, "_CHOSEN", {})
    monkeypatch.setitem(attention.KERNELS, "cpu", ["cudnn", "cpu_flash"])   # cuDNN's op has no CPU kernel
    out, _ = attention.prefix_sdpa_forward(None, q, k, v)
    assert torch.allclose(out, ref, atol=1e-5) and attention.chosen() == {"continue/cpu/float32/16": "cpu_flash"}
    monkeypatch.setattr(attention, "_CHOSEN", {})
    monkeypatch.setitem(attention.KERNELS, "cpu", ["cudnn"])
    for _ in range(2):   # the second call goes straight to the remembered fallback
        out, _ = attention.prefix_sdpa_forward(None, q, k, v)
        assert torch.allclose(out, ref, atol=1e-5) and attention.chosen() == {"continue/cpu/float32/16": "masked"}


def test_a_sliding_window_model_keeps_transformers_masks(tokenizer):
    """The continuation kernel has no window: a model with one keeps the masked path."""
    from transformers import MistralConfig

    assert attention.applies(shapes.config("tiny", tokenizer))
    assert not attention.applies(MistralConfig(sliding_window=4096))


@pytest.mark.parametrize("kv_len,splits", [(4096, 8), (4100, 8), (3000, 1)])
def test_split_kv_decoding_equals_one_kernel_over_every_key(monkeypatch, kv_len, splits):
    """Flash-decoding (CUDA, long caches): the keys in equal pieces run as one batch plus the
    remainder, merged by log-sum-exp, give the one-query attention over every key (GQA included)."""
    import torch.nn.functional as F

    monkeypatch.setattr(attention, "_CHOSEN", {})
    torch.manual_seed(0)
    q = torch.randn(1, 6, 1, 16)
    cache = torch.randn(2, 1, 3, kv_len + 50, 16)          # a preallocated buffer, part of it filled
    k, v = cache[0][:, :, :kv_len], cache[1][:, :, :kv_len]  # the strided views the KV cache hands over
    ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    out = attention.split_kv_decode(q, k, v, None, splits=splits)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5)
    assert attention.chosen() == {"decode/cpu/float32/16": "cpu_flash"}
    monkeypatch.setitem(attention.SPLIT_KV_MIN, "cpu", 1)   # the model's attention takes this path on CUDA
    routed, _ = attention.prefix_sdpa_forward(None, q, k, v)
    assert torch.allclose(routed, ref.transpose(1, 2), atol=1e-5)
