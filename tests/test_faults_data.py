"""Bad input, class "bad data files" and "silently wrong data": damaged, non-UTF-8 or off-schema
corpus files, mixture YAMLs and BookQA files are one line naming the file and what is wrong, or
skipped under a stated rule; a changed file is never read from a stale cache; reading caps per
domain, so a domain late in a file is not lost."""

import gzip
import json
import logging

import pytest
import zstandard

from harness.data import build, corpus, mixture
from harness.errors import UserError
from harness.tasks import bookqa

WORDS = "the quick brown fox jumps over the lazy dog and keeps running through the field ".split()


def _doc(i, domain, words=300):
    return {"id": f"{domain}-{i}", "domain": domain, "text": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words))}


def _jsonl(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" if isinstance(r, dict) else r for r in rows)


# -- corpus files ------------------------------------------------------------------------------------

def test_non_utf8_lines_count_as_malformed(tmp_path, caplog):
    f = tmp_path / "a.jsonl"
    f.write_bytes(_jsonl([_doc(i, "book") for i in range(199)] + [b'{"text": "caf\xe9", "domain": "book"}\n']))
    with caplog.at_level(logging.WARNING):
        docs = list(corpus.open_source(f"jsonl:{f}"))
    assert len(docs) == 199 and "skipped 1 malformed lines of 200" in caplog.text
    f.write_bytes(_jsonl([_doc(0, "book"), b"\xff\xfe\n", b"not json\n", b"[1, 2]\n"]))
    with pytest.raises(UserError, match=r"3 of 4 lines .* are not UTF-8 JSON objects"):
        list(corpus.open_source(f"jsonl:{f}"))


@pytest.mark.parametrize("name, damage, message", [
    ("a.jsonl.zst", lambda blob: zstandard.ZstdCompressor().compress(blob)[:-40], "frame is incomplete"),
    ("a.jsonl.zst", lambda blob: b"plain text, not zstd\n" * 50, "cannot be read past line 0"),
    ("a.jsonl.gz", lambda blob: gzip.compress(blob)[:-30], "cannot be read past line"),
    ("a.jsonl.gz", lambda blob: blob, "Not a gzipped file"),
])
def test_a_damaged_compressed_file_is_named(tmp_path, name, damage, message):
    f = tmp_path / name
    f.write_bytes(damage(_jsonl([_doc(i, "book") for i in range(200)])))
    with pytest.raises(UserError, match=message) as exc:
        list(corpus.open_source(f"jsonl:{f}"))
    assert str(f) in str(exc.value)


def test_unknown_domains_are_reported(tmp_path, smollm2_dir, caplog):
    f = tmp_path / "a.jsonl"
    f.write_bytes(_jsonl([_doc(i, "recipes") for i in range(20)]))
    with caplog.at_level(logging.WARNING):
        with pytest.raises(UserError, match=r"none of the domains it weights .* its domains: recipes"):
            build.build(source=f"jsonl:{f}", strategy="per_source", tokens=2000, seq_len=64,
                        tokenizer=str(smollm2_dir), seed=0, out=tmp_path / "o")
    assert "20 documents in domains outside the seven (recipes 20)" in caplog.text
    assert not (tmp_path / "o" / "manifest.json").exists()


# -- reading caps and caches -------------------------------------------------------------------------

def _domain_tokens(out):
    return {d: row["tokens"] for d, row in json.loads((out / "stats.json").read_text())["domains"].items()}


def test_a_domain_at_the_end_of_a_file_is_read(tmp_path, smollm2_dir):
    """The read cap is per domain: 200 book documents first no longer starve the github ones after them."""
    f = tmp_path / "a.jsonl"
    f.write_bytes(_jsonl([_doc(i, "book") for i in range(200)] + [_doc(i, "github") for i in range(20)]))
    out = tmp_path / "o"
    build.build(source=f"jsonl:{f}", strategy="per_source", tokens=4000, seq_len=64, tokenizer=str(smollm2_dir),
                seed=0, out=out, read_factor=2.0)
    assert _domain_tokens(out).get("github", 0) > 0


def test_the_malformed_line_rule_holds_when_reading_stops_early(tmp_path, smollm2_dir):
    rows = []
    for i in range(400):
        rows.append(_doc(i, "book"))
        if i % 10 == 0:
            rows.append(b"garbage\n")  # about 9% of lines
    f = tmp_path / "a.jsonl"
    f.write_bytes(_jsonl(rows))
    with pytest.raises(UserError, match="allowed up to 1.0%"):
        build.build(source=f"jsonl:{f}", strategy="cut_4k", tokens=2000, seq_len=64, tokenizer=str(smollm2_dir),
                    seed=0, out=tmp_path / "o", read_factor=2.0)


def test_a_changed_source_file_is_tokenized_again(tmp_path, smollm2_dir):
    """The tokenization cache is keyed by content: same path, new documents, new tokens."""
    f = tmp_path / "a.jsonl"
    f.write_bytes(_jsonl([_doc(i, "book") for i in range(60)]))
    first = build.build(source=f"jsonl:{f}", strategy="cut_4k", tokens=2000, seq_len=64,
                        tokenizer=str(smollm2_dir), seed=0, out=tmp_path / "a")
    f.write_bytes(_jsonl([_doc(i, "book", words=50) for i in range(184)]))
    second = build.build(source=f"jsonl:{f}", strategy="cut_4k", tokens=2000, seq_len=64,
                         tokenizer=str(smollm2_dir), seed=0, out=tmp_path / "b")
    assert (first["corpus_documents"], second["corpus_documents"]) == (60, 184)


# -- mixture YAMLs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("body, message", [
    ("weights: {book: .nan, c4: 1}", "weight of 'book' is nan"),
    ("weights: {book: .inf}", "weight of 'book' is inf"),
    ("weights: {book: true}", "weight of 'book' is True"),
    ("weights: {book: 1}\nlength_rule: {type: cut, length: lots}", "length_rule.length is 'lots'"),
    ("weights: {book: 1}\nlength_rule: {type: cut, length: 0.5}", "length_rule.length is 0.5"),
    ("weights: {book: 1}\nlength_rule: [cut]", "length_rule is ['cut']"),
    ("weights: {book: 1}\nlength_rule: {type: upsample_long, keep_short: half}", "keep_short is 'half'"),
    ("weights: {book: 1}\nlength_rule: {type: upsample_long, threshold: -4}", "threshold is -4"),
    ("weights: {book: 1}\nweight: {c4: 1}", "unknown key 'weight'"),
    ("weights: {book: 1}\nlength_rule: {type: cut, lenght: 4096}", "unknown key 'lenght'"),
])
def test_mixture_yaml_schema(tmp_path, body, message):
    f = tmp_path / "mix.yaml"
    f.write_text(body + "\n")
    with pytest.raises(UserError, match="--strategy .*mix.yaml") as exc:
        mixture.resolve(str(f), 4096)
    assert message in str(exc.value) and "\n" not in str(exc.value)


# -- BookQA files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    (b"42\n", "line 1 is a JSON int, not an object"),
    (b'{"context": "a\xff", "input": "q", "answer": "a"}\n', "line 1 is not UTF-8 text"),
    (b'{"context": 7, "input": "q", "answer": "a"}\n', "'context' is int, not non-empty text"),
    (b'{"context": "text", "input": "q", "answer": [{"x": 1}]}\n', "'answer' must be text"),
])
def test_bookqa_rows_off_the_schema(tmp_path, line, message):
    f = tmp_path / "q.jsonl"
    f.write_bytes(line)
    with pytest.raises(UserError, match=message):
        bookqa.read_infinitebench(f)


# -- files named by flags, checked before any work ----------------------------------------------------

@pytest.mark.parametrize("source, message", [("ftp:x", "unknown 'ftp:x'"), ("jsonl", "needs a path"),
                                             ("jsonl:/nonexistent/x.jsonl", "does not exist")])
def test_ablate_checks_its_source_before_any_stage(capsys, tmp_path, source, message):
    from tests.conftest import one_line_error

    out = tmp_path / "never"
    assert message in one_line_error(capsys, ["ablate", "--preset", "tiny", "--source", source, "--out", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("body, message", [(b"\xff\xfe", "is not valid JSON"), (b"[1]", "zero_optimization.stage"),
                                           (b'{"zero_optimization": 3}', "zero_optimization.stage")])
def test_a_deepspeed_config_off_the_schema(tmp_path, body, message):
    from harness.trainer.engines import load_ds_config

    f = tmp_path / "ds.json"
    f.write_bytes(body)
    with pytest.raises(UserError, match=message):
        load_ds_config(f)
