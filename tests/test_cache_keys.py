"""Directories the harness builds into its cache are named by their whole key (harness.paths): a
build with any one input changed lands in a directory of its own, the same inputs in the same one,
and ``key.json`` inside records what it was built from."""

import json

import pytest

from harness import paths, rundir
from harness.data import build

WORDS = "the quick brown fox jumps over the lazy dog and keeps running through the field ".split()


def _corpus(path, n: int, words: int = 300) -> None:
    path.write_text("".join(json.dumps({"id": f"d{i}", "domain": ["book", "c4", "github"][i % 3],
                                        "text": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words))}) + "\n"
                            for i in range(n)))


def _key_of(directory) -> dict:
    """The key recorded in ``directory``, checked to be the one its name hashes."""
    key = json.loads((directory / paths.KEY_FILE).read_text())
    assert directory.name.endswith(rundir.config_hash(key)), (directory.name, key)
    return key


def test_a_keyed_directory_is_named_by_every_field_of_its_key(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGCTX_HARNESS_CACHE", str(tmp_path))
    base = {"source": "jsonl:a", "tokens": 2000, "seed": 0, "strategy": {"name": "cut_4k", "mix": "slimpajama"}}
    here = paths.keyed_dir("data", "x", base)
    assert here == paths.keyed_dir("data", "x", dict(reversed(base.items())))  # field order does not matter
    assert here.parent == tmp_path / "data" and here.name.startswith("x-") and not here.exists()
    variants = [{**base, "source": "jsonl:b"}, {**base, "tokens": 2001}, {**base, "seed": 1},
                {**base, "strategy": {"name": "cut_4k", "mix": "llama"}}, {**base, "format": 2}]
    assert len({here, *(paths.keyed_dir("data", "x", v) for v in variants)}) == len(variants) + 1


def test_data_builds_differing_in_any_one_input_land_in_different_directories(tmp_path, monkeypatch, smollm2_dir,
                                                                             tokenizer):
    monkeypatch.setenv("LONGCTX_HARNESS_CACHE", str(tmp_path / "cache"))
    f, g = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _corpus(f, 60)
    _corpus(g, 61)
    tokenizer.save_pretrained(tmp_path / "tok")   # the same vocabulary, named by another directory
    base = dict(source=f"jsonl:{f}", strategy="per_source", tokens=2000, seq_len=64, tokenizer=str(smollm2_dir), seed=0)

    def where(**change):
        return build.cache_path("t", build.prepare(**{**base, **change}).config)

    here = where()
    assert where() == here   # the same inputs, prepared again: the same directory
    variants = {"source": where(source=f"jsonl:{g}"), "strategy": where(strategy="cut_4k"),
                "mix": where(mix="llama"), "tokens": where(tokens=4000), "seq_len": where(seq_len=128),
                "seed": where(seed=1), "tokenizer": where(tokenizer=str(tmp_path / "tok")), "read_factor": where(read_factor=5.0)}
    assert here not in variants.values() and len(set(variants.values())) == len(variants), variants

    # Built: key.json is the config the manifest records; the same inputs again find it done.
    prepared = build.prepare(**base)
    first = build.build_prepared(prepared, here, key_file=True)
    assert _key_of(here) == first["config"] == prepared.config
    manifest = (here / "manifest.json").stat().st_mtime_ns
    again = build.prepare(**base)
    assert build.cache_path("t", again.config) == here
    assert build.build_prepared(again, here, key_file=True)["config_hash"] == first["config_hash"]
    assert (here / "manifest.json").stat().st_mtime_ns == manifest
    tokenized = [p for p in (tmp_path / "cache" / "tokenized").iterdir() if not p.name.startswith(".")]
    assert len(tokenized) == 1 and _key_of(tokenized[0])["tokenizer"] == first["config"]["corpus"]["tokenizer"]

    # The source edited in place (same path): a new directory, built, never a "different config" refusal.
    _corpus(f, 90)
    edited = build.prepare(**base)
    there = build.cache_path("t", edited.config)
    assert there != here
    assert build.build_prepared(edited, there, key_file=True)["corpus_documents"] == 90
    assert _key_of(there)["corpus"]["source"]["content"] != _key_of(here)["corpus"]["source"]["content"]


def test_the_converted_model_records_its_key(smollm2_dir):
    key = _key_of(smollm2_dir)
    assert smollm2_dir.name.startswith("smollm2-135m-")
    assert {"version", "gguf", "transformers", "converter"} <= set(key) and key["dtype"] == "bfloat16"


@pytest.mark.parametrize("field", ["version", "transformers", "converter"])
def test_a_model_key_changed_in_one_field_is_another_directory(smollm2_dir, field):
    key = _key_of(smollm2_dir)
    assert paths.keyed_dir("models", "smollm2-135m", key) == smollm2_dir
    assert paths.keyed_dir("models", "smollm2-135m", {**key, field: "other"}) != smollm2_dir
