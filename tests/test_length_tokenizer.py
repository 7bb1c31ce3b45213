"""--length-tokenizer: two models with different tokenizers read byte-identical needle prompts, every
cell records its item's hash, and `harness compare` pairs the two runs by it (and says so in one
line when runs share no item)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import harness
from harness.cli import main


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, kjv):
    """A tiny random Llama with a tokenizer of its own: a byte-level BPE trained here on KJV text
    (2,000 tokens), saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([kjv.text[:400_000]], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    path = tmp_path_factory.mktemp("other-tokenizer-llama")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


GRID = dict(suites="needle", lengths="256,512", depths="0,50,100", protocol="exact", dtype="fp32", max_new_tokens=4)


def _cells(res) -> dict:
    return {c["key"]: c for c in res.cells}


def test_two_tokenizers_read_identical_items_and_compare_pairs_them(tiny_model_dir, other_model_dir, smollm2_dir,
                                                                    tmp_path, capsys, caplog):
    runs = {}
    for name, model in (("smol", tiny_model_dir), ("other", other_model_dir)):
        runs[name] = harness.run(str(model), out=tmp_path / name, length_tokenizer=str(smollm2_dir), **GRID)
    smol, other = _cells(runs["smol"]), _cells(runs["other"])
    assert set(smol) == set(other) and len(smol) == 6
    for key in smol:
        assert smol[key]["item_sha256"] == other[key]["item_sha256"]
        assert smol[key]["tokens"] != other[key]["tokens"]   # the same text, each model's own token count
    assert len({c["item_sha256"] for c in smol.values()}) == 6
    config = json.loads((tmp_path / "other" / "manifest.json").read_text())["config"]["suites"]["needle"]
    assert config["length_tokenizer"] == str(smollm2_dir.resolve())   # in the run's identity
    main(["compare", str(tmp_path / "smol"), str(tmp_path / "other"), "--json"])
    found = json.loads(capsys.readouterr().out)
    needle = next(c for c in found if c["column"] == "needle mean")
    assert needle["n"] == 6 and needle["method"].startswith("paired")

    # Without it each model measures in its own tokens: no item in common, compared unpaired, said once.
    alone = harness.run(str(other_model_dir), out=tmp_path / "alone", **GRID)
    assert not {c["item_sha256"] for c in alone.cells} & {c["item_sha256"] for c in smol.values()}
    with caplog.at_level(logging.WARNING, logger="harness"):
        main(["compare", str(tmp_path / "smol"), str(tmp_path / "alone"), "--json"])
    found = json.loads(capsys.readouterr().out)
    # Unpaired: from the two rows' standard errors, where they have any (a random model's are 0: none).
    assert not [c for c in found if c["column"] == "needle mean" and c["method"].startswith("paired")]
    assert [r.message for r in caplog.records if "share no items" in r.message]


def test_the_same_run_without_the_flag_keeps_its_prompts(tiny_model_dir, smollm2_dir, tmp_path):
    """SmolLM2's tokenizer as its own length tokenizer gives the prompts it gives without the flag."""
    plain = _cells(harness.run(str(tiny_model_dir), **GRID))
    measured = _cells(harness.run(str(tiny_model_dir), length_tokenizer=str(smollm2_dir), **GRID))
    assert {k: c["item_sha256"] for k, c in plain.items()} == {k: c["item_sha256"] for k, c in measured.items()}
    assert {k: c["tokens"] for k, c in plain.items()} == {k: c["tokens"] for k, c in measured.items()}


def test_length_tokenizer_with_a_chat_prompt_is_refused(capsys, tiny_model_dir, smollm2_dir):
    from tests.conftest import one_line_error

    err = one_line_error(capsys, ["run", "--model", str(tiny_model_dir), "--chat", "--length-tokenizer",
                                  str(smollm2_dir), "--protocol", "exact"])
    assert "--length-tokenizer: base prompts only" in err
