"""The preallocated KV cache: the same logits as transformers' DynamicCache, bit for bit, without
reallocating; cropping moves a length; sliding-window models work; other layer kinds are refused."""

import pytest
import torch
from transformers import DynamicCache

from harness import models
from harness.backends import Request
from harness.backends.hf import HFBackend
from harness.backends.kv_cache import PreallocatedCache, check_config
from harness.errors import UserError


def _walk(model, cache, ids: list[int], chunk: int, steps: int) -> list[torch.Tensor]:
    """Chunked prefill then greedy steps; every logit row the model produced."""
    arg = "cache" if "cache" in __import__("inspect").signature(model.forward).parameters else "past_key_values"
    seq = torch.tensor([ids])
    rows = []
    with torch.inference_mode():
        for s in range(0, len(ids), chunk):
            rows.append(model(input_ids=seq[:, s:s + chunk], **{arg: cache}, use_cache=True).logits[0])
        for _ in range(steps):
            step = rows[-1][-1:].argmax(-1)[None]
            rows.append(model(input_ids=step, **{arg: cache}, use_cache=True).logits[0])
    return rows


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_same_logits_as_dynamic_cache_bit_for_bit(tiny_model_dir, tokenizer, dtype):
    loaded = models.load(str(tiny_model_dir), dtype=dtype)
    ids = tokenizer("In the beginning God created the heaven and the earth. " * 20)["input_ids"]
    ref = _walk(loaded.model, DynamicCache(config=loaded.model.config), ids, 64, 12)
    cache = PreallocatedCache(loaded.model.config, len(ids) + 12)
    got = _walk(loaded.model, cache, ids, 64, 12)
    assert len(got) == len(ref)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))
    # Nothing was reallocated: one buffer per layer, filled to the prompt and the fed tokens.
    layer = cache.layers[0]
    assert layer.capacity == len(ids) + 12 and layer.length == len(ids) + 12
    assert layer.keys.data_ptr() == layer._keys.data_ptr()


def test_crop_moves_a_length_and_a_write_past_capacity_grows(tiny_model_dir):
    config = cache_config_of(tiny_model_dir)
    cache = PreallocatedCache(config, 8)
    k = torch.arange(2 * 5 * 4, dtype=torch.float32).reshape(1, 2, 5, 4)
    cache.update(k, -k, 0)
    buffer = cache.layers[0]._keys.data_ptr()
    cache.crop(-3)
    assert cache.get_seq_length() == 2 and cache.layers[0].keys.shape[2] == 2
    assert cache.layers[0]._keys.data_ptr() == buffer  # nothing freed, nothing copied
    cache.update(k, -k, 0)  # 2 + 5 = 7 <= 8: in place
    assert cache.layers[0]._keys.data_ptr() == buffer
    assert torch.equal(cache.layers[0].keys[:, :, 2:], k) and torch.equal(cache.layers[0].keys[:, :, :2], k[:, :, :2])
    cache.update(k, -k, 0)  # 12 > 8: grows once, the contents kept
    assert cache.layers[0].capacity == 12 and cache.get_seq_length() == 12
    assert torch.equal(cache.layers[0].values[:, :, 7:], -k) and torch.equal(cache.layers[0].keys[:, :, 2:7], k)
    rows = PreallocatedCache.from_rows(config, [[(k, -k)] * 2, [(k + 1, -k - 1)] * 2], capacity=9)
    assert rows.layers[1].keys.shape == (2, 2, 5, 4) and rows.layers[1]._keys.shape[2] == 9
    assert torch.equal(rows.layers[1].keys[1:], k + 1) and torch.equal(rows.layers[1].values[:1], -k)


def cache_config_of(path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


def test_batched_decoding_and_prefix_tree_keep_one_buffer(tiny_model_dir, tokenizer, kjv):
    """The grid walk allocates its cache once, for the longest request; every cell gets a peak."""
    from harness.tasks import needle

    loaded = models.load(str(tiny_model_dir), dtype="fp32")
    cfg = needle.resolve_config(preset=None, lengths="256,512", depths="0,50,100", chat=False, haystack=kjv,
                                max_new_tokens=6, protocol="exact")
    suite = needle.NeedleSuite(cfg, kjv, tokenizer)
    requests = [suite.request(cell)[0] for cell in suite.cells()]
    allocated = []
    original = PreallocatedCache.__init__

    def spy(self, config, capacity):
        allocated.append(capacity)
        original(self, config, capacity)

    PreallocatedCache.__init__ = spy
    try:
        out = dict(HFBackend(loaded, prefill_chunk=100).generate_many(requests))
        fast = dict(HFBackend(loaded, prefill_chunk=100, fast=True).generate_many(requests))
    finally:
        PreallocatedCache.__init__ = original
    longest = max(len(r.ids) for r in requests) + 6
    assert allocated[0] == longest  # the exact walk: one cache
    assert len(allocated) == 1 + 1 + 2  # then fast: the tree's cache and one batch per length
    assert all(out[i].text == fast[i].text for i in out)
    assert all(g.peak_gib and g.peak_gib > 0 for g in [*out.values(), *fast.values()])


def test_sliding_window_model_matches_generate(tokenizer):
    """Every layer keeps its whole history and the mask applies the window: the same tokens as
    transformers' own generate (whose cache drops what leaves the window), with prefix reuse."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                           sliding_window=16, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = MistralForCausalLM(config).eval()
    loaded = models.from_objects(model, tokenizer)
    base = tokenizer("And God said, Let there be light: and there was light. " * 6)["input_ids"]
    prompts = [base + tokenizer(f" Verse {n}.")["input_ids"] for n in range(3)]
    ours = dict(HFBackend(loaded, prefill_chunk=20).generate_many([Request(tuple(p), 10, False) for p in prompts]))
    for i, p in enumerate(prompts):
        with torch.inference_mode():
            ref = model.generate(torch.tensor([p]), max_new_tokens=10, min_new_tokens=10, do_sample=False)
        assert list(ours[i].token_ids) == ref[0, len(p):].tolist()
    assert sum(g.reused_tokens for g in ours.values()) > len(base)


def test_other_layer_kinds_are_refused_in_one_line(tiny_model_dir):
    config = cache_config_of(tiny_model_dir)
    config.layer_types = ["full_attention", "linear_attention"]
    with pytest.raises(UserError, match="linear_attention.*accepted: attention layers"):
        check_config(config)
