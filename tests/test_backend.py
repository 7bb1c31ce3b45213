"""The HF backend's greedy loop against transformers' own generate, on a real (tiny) model."""

import torch

from harness import models
from harness.backends.hf import HFBackend


def test_greedy_loop_matches_generate_and_chunking_is_exact(tiny_model_dir, tokenizer):
    loaded = models.load(str(tiny_model_dir), dtype="fp32")
    ids = tokenizer("In the beginning God created the heaven and the earth. " * 30)["input_ids"]
    ref = loaded.model.generate(torch.tensor([ids]), max_new_tokens=24, min_new_tokens=24, do_sample=False)
    expected = tokenizer.decode(ref[0, len(ids):], skip_special_tokens=True).strip()
    whole = HFBackend(loaded).generate(ids, 24, stop_at_eos=False)
    chunked = HFBackend(loaded, prefill_chunk=37).generate(ids, 24, stop_at_eos=False)
    assert whole.new_tokens == chunked.new_tokens == 24
    assert whole.text == expected
    assert chunked.text == expected


def test_stops_at_eos_when_asked(tiny_model_dir, tokenizer):
    loaded = models.load(str(tiny_model_dir), dtype="fp32")
    backend = HFBackend(loaded)
    ids = tokenizer("Hello there. " * 10)["input_ids"]
    free = backend.generate(ids, 12, stop_at_eos=False)
    assert free.new_tokens == 12
    # Make the first greedy token EOS by construction: stop_at_eos must yield an empty answer.
    first = int(loaded.model(torch.tensor([ids])).logits[0, -1].argmax())
    backend.eos = {first}
    stopped = backend.generate(ids, 12, stop_at_eos=True)
    assert stopped.new_tokens == 0 and stopped.text == ""


def test_a_leading_eos_does_not_stop_when_asked(tiny_model_dir, tokenizer):
    """The needle's reference protocol on ChatML models: EOS stops decoding, except an EOS before
    any other token (tasks/needle.yaml)."""
    loaded = models.load(str(tiny_model_dir), dtype="fp32")
    ids = tokenizer("Hello there. " * 10)["input_ids"]
    free = loaded.model.generate(torch.tensor([ids]), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    tokens = free[0, len(ids):].tolist()
    backend = HFBackend(loaded)
    backend.eos = {tokens[0]}  # the first greedy token is EOS by construction
    lead = next((i for i, t in enumerate(tokens) if t != tokens[0]), len(tokens))
    end = next((i for i in range(lead, len(tokens)) if tokens[i] == tokens[0]), len(tokens))
    got = backend.generate(ids, 12, stop_at_eos=True, skip_leading_eos=True)
    assert got.new_tokens == end >= 1
    assert got.text == tokenizer.decode(tokens[:end], skip_special_tokens=True).strip()


def test_prefix_tree_reuse_equals_one_prompt_at_a_time(tiny_model_dir, tokenizer, kjv):
    """A needle grid's prompts share the haystack: served together they reuse it, with the same outputs
    (exact mode: bit for bit in any dtype; on SmolLM2 in bf16, bench/needle_grid.py counts them)."""
    from harness.tasks import needle

    loaded = models.load(str(tiny_model_dir), dtype="fp32")
    cfg = needle.resolve_config(preset=None, lengths="256,512", depths="0,50,100", chat=False, haystack=kjv,
                                max_new_tokens=8, scorer="both", protocol="exact")
    suite = needle.NeedleSuite(cfg, kjv, tokenizer)
    requests = [suite.request(cell)[0] for cell in suite.cells()]
    backend = HFBackend(loaded, prefill_chunk=100)
    together = dict(backend.generate_many(requests))
    # Fast mode (split attention, batched decoding) regroups the arithmetic: in fp32 on this grid
    # its outputs are still the same.
    fast = dict(HFBackend(loaded, prefill_chunk=100, fast=True).generate_many(requests))
    assert sorted(together) == list(range(len(requests)))
    # The haystack trunk is shared: a cell at depth d reuses about d% of its length (depth 0:
    # only the template's head), so this grid reuses about a third of its prompt tokens.
    reused = sum(g.reused_tokens for g in together.values())
    assert reused > 0.3 * sum(len(r.ids) for r in requests)
    for i, req in enumerate(requests):
        alone = dict(HFBackend(loaded, prefill_chunk=100).generate_many([req]))[0]
        assert alone.reused_tokens == 0
        assert together[i].text == alone.text and together[i].new_tokens == 8
        assert fast[i].text == alone.text
        assert torch.allclose(torch.tensor(together[i].target_logprobs), torch.tensor(alone.target_logprobs), atol=1e-4)
        # The answer's log-probability is the teacher-forced one: -token_nll over prompt + answer.
        nll = backend.token_nll(list(req.ids) + list(req.target))
        assert torch.allclose(-nll[-len(req.target):], torch.tensor(alone.target_logprobs), atol=1e-4)


def test_split_causal_attention_equals_masked_sdpa():
    """Queries continuing a cache: past (no mask) + causal self part, merged, equal the masked kernel."""
    import torch.nn.functional as F
    from torch.nn.attention.bias import causal_lower_right

    from harness.backends.attention import prefix_sdpa_forward

    torch.manual_seed(0)
    q = torch.randn(2, 6, 40, 16)
    k, v = torch.randn(2, 3, 100, 16), torch.randn(2, 3, 100, 16)  # grouped-query: 6 heads on 3 KV heads
    out, _ = prefix_sdpa_forward(None, q, k, v, scaling=0.25)
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                         attn_mask=causal_lower_right(40, 100), scale=0.25)
    assert torch.allclose(out, ref.transpose(1, 2), atol=1e-5)
    full, _ = prefix_sdpa_forward(None, q, k[:, :, :40], v[:, :, :40])  # a fresh prefill: plain causal
    ref = F.scaled_dot_product_attention(q, k[:, :, :40].repeat_interleave(2, 1), v[:, :, :40].repeat_interleave(2, 1),
                                         is_causal=True)
    assert torch.allclose(full, ref.transpose(1, 2), atol=1e-5)
