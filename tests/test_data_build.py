"""`harness data build` end to end on a small real-text corpus: readers, tokenization, packing."""

import gzip
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import zstandard

from harness.cli import main
from harness.errors import UserError
from harness.data import build, corpus, mixture, packing
from tests.conftest import one_line_error

DOMAINS = {"book": (6000, 20000), "arxiv": (3000, 9000), "commoncrawl": (200, 1500), "c4": (100, 600),
           "github": (150, 900), "wikipedia": (100, 500), "stackexchange": (100, 400)}


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory, kjv):
    """Documents cut from the KJV at known character lengths, one domain per length range."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl.gz"
    text, pos, rows = kjv.text, 0, []
    for d, (lo, hi) in DOMAINS.items():
        for i in range(12 if d in ("book", "arxiv") else 60):
            n = int(rng.integers(lo, hi)) * 4  # ~4 characters per token
            if pos + n > len(text):
                pos = 0
            rows.append({"id": f"{d}-{i}", "domain": d, "text": text[pos:pos + n]})
            pos += n
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return path, {r["id"]: r for r in rows}


def _build(text_corpus, smollm2_dir, out, strategy="per_source", seed=0, tokens=120_000, seq_len=2048):
    return build.build(source=f"jsonl:{text_corpus[0]}", strategy=strategy, tokens=tokens, seq_len=seq_len,
                       tokenizer=str(smollm2_dir), seed=seed, out=out, num_proc=2)


def _rows(out):
    return [r for f in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_packed_sequences_reproduce_their_documents_in_order(text_corpus, smollm2_dir, tokenizer, tmp_path):
    out = tmp_path / "b"
    manifest = _build(text_corpus, smollm2_dir, out)
    rows = _rows(out)
    assert len(rows) == manifest["sequences"] == 120_000 // 2048
    assert all(len(r["input_ids"]) == 2048 and sum(r["doc_lens"]) == 2048 for r in rows)
    # Rebuild the plan (deterministic) and check every piece against the tokenized source text.
    docs = text_corpus[1]
    src = corpus.open_source(f"jsonl:{text_corpus[0]}")
    ds = packing.tokenize_corpus(src, tokenizer, key=manifest["config"]["corpus"])
    plan = mixture.plan(mixture.builtin("per_source", 2048), np.asarray(ds["domain"]),
                        np.asarray(ds["n_tokens"]), 120_000, 0)
    stream = []
    for doc, a, b in plan.segments.tolist():
        ids = tokenizer(docs[ds[doc]["id"]]["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        stream.append((ids[a:b], ds[doc]["domain"]))
    flat = [t for ids, _ in stream for t in ids]
    packed = [t for r in rows for t in r["input_ids"]]
    assert packed == flat[:len(packed)]
    first = rows[0]
    assert first["domains"][0] == stream[0][1]
    assert tokenizer.decode(first["input_ids"][:first["doc_lens"][0]]).replace("<|im_end|>", "") in docs[ds[int(plan.segments[0, 0])]["id"]]["text"]


def test_same_seed_same_bytes_and_stats_cli(text_corpus, smollm2_dir, tmp_path, capsys):
    a = _build(text_corpus, smollm2_dir, tmp_path / "a", seed=5)
    b = _build(text_corpus, smollm2_dir, tmp_path / "b", seed=5)
    assert a["shards"] == b["shards"]
    for name in a["shards"]:
        assert (tmp_path / "a" / "shards" / name).read_bytes() == (tmp_path / "b" / "shards" / name).read_bytes()
    assert (tmp_path / "a" / "mixture.png").stat().st_size > 0
    capsys.readouterr()
    main(["data", "stats", str(tmp_path / "a"), "--json"])
    stats = json.loads(capsys.readouterr().out)
    assert stats["strategy"] == "per_source" and stats["seq_len"] == 2048 and stats["total_tokens"] == 120_000
    for d, s in stats["domains"].items():
        assert {"tokens", "share", "source_share", "long_4k_share", "repeat"} <= set(s)
    # Rebuilding the same config is a no-op; a different one is refused.
    assert _build(text_corpus, smollm2_dir, tmp_path / "a", seed=5)["config_hash"] == a["config_hash"]
    with pytest.raises(UserError, match="different config"):
        _build(text_corpus, smollm2_dir, tmp_path / "a", seed=6)


def test_slimpajama_reader_on_jsonl_zst(tmp_path):
    rows = [{"text": "alpha beta", "meta": {"redpajama_set_name": "RedPajamaBook"}},
            {"text": "def f(): pass", "meta": {"redpajama_set_name": "RedPajamaGithub"}},
            {"text": "x", "meta": {"redpajama_set_name": "RedPajamaStackExchange"}}]
    blob = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "chunk1").mkdir()
    (tmp_path / "chunk1" / "example_train_0.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(blob))
    src = corpus.open_source(f"slimpajama:{tmp_path}")
    docs = list(src)
    assert [d.domain for d in docs] == ["book", "github", "stackexchange"]
    assert docs[1].text == "def f(): pass"
    assert list(src) == docs  # re-iterable: a second epoch reads the files again


def test_malformed_lines_are_counted_and_capped(tmp_path, caplog):
    good = [json.dumps({"text": f"doc {i}", "domain": "c4"}) for i in range(200)]
    f = tmp_path / "a.jsonl"
    f.write_text("\n".join(good + ["{not json"]) + "\n")
    docs = list(corpus.open_source(f"jsonl:{f}"))
    assert len(docs) == 200 and "skipped 1 malformed lines of 201" in caplog.text
    f.write_text("\n".join(good[:50] + ["{not json", '{"text": 3}']) + "\n")
    with pytest.raises(UserError, match="2 of 52 lines"):
        list(corpus.open_source(f"jsonl:{f}"))
    assert len(list(corpus.open_source(f"jsonl:{f}", max_bad_fraction=0.05))) == 50


@pytest.mark.parametrize("extra, message", [
    (["--strategy", "bogus"], "known: cut_4k, cut_target, per_source, global, upsample_abg"),
    (["--strategy", "per_source", "--seq-len", "0"], "--seq-len"),
    (["--strategy", "per_source", "--tokens", "-5M"], "--tokens"),
    (["--strategy", "per_source", "--source", "jsonl:/nonexistent.jsonl"], "does not exist"),
    (["--strategy", "per_source", "--source", "parquet:/x"], "unknown 'parquet:/x'"),
])
def test_bad_data_build_input(capsys, tmp_path, smollm2_dir, extra, message):
    argv = ["data", "build", "--tokens", "100k", "--seq-len", "1k", "--tokenizer", str(smollm2_dir),
            "--out", str(tmp_path / "o"), *extra]
    # later flags win in click, so the parametrised ones override the defaults above
    assert message in one_line_error(capsys, argv)
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_source_with_no_readable_documents(capsys, tmp_path, smollm2_dir):
    f = tmp_path / "empty.jsonl"
    f.write_text("\n")
    err = one_line_error(capsys, ["data", "build", "--source", f"jsonl:{f}", "--strategy", "per_source", "--tokens", "10k",
                        "--seq-len", "1k", "--tokenizer", str(smollm2_dir), "--out", str(tmp_path / "o")])
    assert "no readable documents" in err


def test_excluded_documents_are_read_once_and_left_out(text_corpus, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGCTX_HARNESS_CACHE", str(tmp_path))  # no cached tokenization to reuse
    # datasets splits list-valued gen_kwargs into shards: a list of exclusions once made every
    # document come back once per excluded id. The corpus must be read exactly once.
    src = corpus.open_source(f"jsonl:{text_corpus[0]}")
    exclude = ["book-0", "c4-3", "wikipedia-7"]
    ds = packing.tokenize_corpus(src, tokenizer, key={"test": "exclusions", "exclude": exclude}, exclude=exclude)
    ids = ds["id"]
    assert len(ids) == len(text_corpus[1]) - 3 and len(set(ids)) == len(ids)
    assert not set(exclude) & set(ids)
