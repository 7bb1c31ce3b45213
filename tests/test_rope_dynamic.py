"""Dynamic RoPE on the HF backend: outputs independent of prefill chunking and of the other cells,
and the frozen-dynamic option (the paper's evaluation of its released checkpoint) against the
reference's formula. A tiny real Llama trained to 256 positions, so prompts of a few hundred
tokens already scale."""

import json
import shutil

import pytest
import torch

from harness import models
from harness.backends.hf import HFBackend
from harness.errors import UserError


@pytest.fixture(scope="module")
def short_model(tiny_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("short") / "m"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 256
    (path / "config.json").write_text(json.dumps(config))
    return path


def _requests(tokenizer, kjv):
    from harness.tasks import needle

    cfg = needle.resolve_config(preset=None, lengths="300,420", depths="0,50,100", chat=False, haystack=kjv,
                                max_new_tokens=6, protocol="exact", scorer="both")
    suite = needle.NeedleSuite(cfg, kjv, tokenizer)
    return [suite.request(cell)[0] for cell in suite.cells()]


def test_dynamic_outputs_do_not_depend_on_chunks_or_on_other_cells(short_model, tokenizer, kjv):
    loaded = models.load(str(short_model), rope_scaling=("dynamic", 4.0), dtype="fp32")
    requests = _requests(tokenizer, kjv)
    small = dict(HFBackend(loaded, prefill_chunk=64).generate_many(requests))
    large = dict(HFBackend(loaded, prefill_chunk=8192).generate_many(requests))
    for i, req in enumerate(requests):
        alone = dict(HFBackend(loaded, prefill_chunk=64).generate_many([req]))[0]
        assert small[i].text == large[i].text == alone.text
        # The answer's log-probabilities see every logit: equal to float rounding, where chunking or
        # a shared prefix would move them by about 1e-3 (the base depends on what was seen).
        for other in (large[i], alone):
            assert torch.allclose(torch.tensor(small[i].target_logprobs), torch.tensor(other.target_logprobs),
                                  atol=1e-6, rtol=0)
    # And each equals transformers' own generate on a freshly reset model, one prompt at a time.
    req = requests[-1]
    HFBackend(loaded)._reset_rope()
    ref = loaded.model.generate(torch.tensor([req.ids]), max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert small[len(requests) - 1].text == tokenizer.decode(ref[0, len(req.ids):], skip_special_tokens=True).strip()


def test_frozen_dynamic_sets_the_reference_base(short_model):
    loaded = models.load(str(short_model), rope_scaling=models.parse_rope_scaling("frozen_dynamic:10@1024"),
                         dtype="fp32")
    rotary = loaded.model.model.rotary_emb
    config = loaded.model.config
    dim = config.hidden_size // config.num_attention_heads

    def inv_freq(n):  # old transformers' LlamaDynamicNTKScalingRotaryEmbedding._set_cos_sin_cache(n)
        base = 10000.0 * ((10 * n / 256) - (10 - 1)) ** (dim / (dim - 2))
        return 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))

    assert torch.allclose(rotary.inv_freq, inv_freq(1024))          # frozen at 1024 from the start
    assert loaded.info["rope_parameters"]["frozen_length"] == 1024
    assert loaded.info["rope_overrides"]["rope_scaling"] == ["frozen_dynamic", 10.0, 1024]
    with torch.inference_mode():
        loaded.model(torch.zeros(1, 600, dtype=torch.long))           # shorter than 1024: still frozen
        assert torch.allclose(rotary.inv_freq, inv_freq(1024))
        loaded.model(torch.zeros(1, 1500, dtype=torch.long))          # longer: grows with the length
        assert torch.allclose(rotary.inv_freq, inv_freq(1500))


def test_frozen_dynamic_flag_values():
    assert models.parse_rope_scaling("frozen_dynamic:10@80k") == ("frozen_dynamic", 10.0, 81920)
    with pytest.raises(UserError, match="frozen_dynamic:FACTOR@LENGTH"):
        models.parse_rope_scaling("frozen_dynamic:10")
    with pytest.raises(UserError, match="is not valid"):
        models.parse_rope_scaling("dynamic:10@4096")
