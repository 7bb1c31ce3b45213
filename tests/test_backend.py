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
