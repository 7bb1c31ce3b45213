"""Loss by length on the embedded corpus's held-out documents, with a real tiny model."""

import json
import logging
import math
import re

import pytest
import torch

from harness import models
from harness.backends.hf import HFBackend
from harness.tasks import loss
from tests.conftest import harness_cli


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return models.load(str(tiny_model_dir), dtype="fp32")


def test_token_nll_matches_the_model_loss(tiny):
    ids = torch.randint(100, 40000, (1, 700))
    ref = tiny.model(input_ids=ids, labels=ids, use_cache=False).loss
    nll = HFBackend(tiny).token_nll(ids[0].tolist(), chunk=256)
    assert len(nll) == 699 and float(nll.mean()) == pytest.approx(float(ref.detach()), abs=1e-4)


def test_buckets_cover_every_token_with_finite_losses(tiny):
    cfg, texts = loss.resolve_config(max_length=2048, spec={"bucket": 512, "max_length": None})
    suite = loss.LossSuite(cfg, texts, tiny.tokenizer)
    cells = suite.cells()
    assert {c.domain for c in cells} >= {"book", "github", "arxiv"}
    backend = HFBackend(tiny)
    results = [suite.evaluate(c, backend) for c in cells[:6]]
    for cell, r in zip(cells, results):
        assert sum(b["tokens"] for b in r["buckets"].values()) == r["tokens"] == cell.length - 1
        assert all(math.isfinite(b["loss"]) for b in r["buckets"].values())
        assert list(r["buckets"])[0] == "0-512"
    table = loss.summary(results)
    assert all(v["tokens"] > 0 for buckets in table.values() for v in buckets.values())


def test_a_bucket_beyond_every_document_is_reported_and_skipped(tiny, caplog):
    cfg, texts = loss.resolve_config(max_length=2048, spec={"bucket": 1_000_000, "max_length": 3_000_000})
    with caplog.at_level(logging.WARNING):
        suite = loss.LossSuite(cfg, texts, tiny.tokenizer)
    assert "is beyond every held-out document" in caplog.text
    assert all(c.length < 1_000_000 for c in suite.cells())


def test_needle_and_loss_in_one_run_directory(tiny_model_dir, tmp_path):
    out = tmp_path / "both"
    proc = harness_cli("run", "--model", str(tiny_model_dir), "--suite", "needle,loss", "--lengths", "256",
                       "--depths", "50", "--loss-bucket", "512", "--loss-length", "1k", "--dtype", "fp32", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {r["suite"] for r in rows} == {"needle", "loss"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["config"]["suites"]) == {"needle", "loss"}
    assert manifest["config"]["suites"]["loss"]["max_length"] == 1024  # --loss-length over the model's 2048
    assert max(r["length"] for r in rows if r["suite"] == "loss") == 1024
    assert (out / "needle_heatmap.png").is_file() and (out / "loss_by_length.png").is_file()
    assert re.search(r"loss .* book 0-512 .* nats/token", proc.stderr)


def test_first_tokens_of_a_prefix_equal_the_whole_documents(tokenizer):
    """The loss suite tokenizes a prefix of each held-out document: the kept tokens are the whole
    text's, on every held-out document and at several lengths."""
    from harness.data import embedded
    from harness.tasks import loss

    corpus = embedded.build()
    held = embedded.read_documents(corpus, json.loads((corpus / "manifest.json").read_text())["held_out"])
    for doc in held.values():
        whole = tokenizer(doc["text"], add_special_tokens=False)["input_ids"]
        for n in (1, 37, 512, 4096, 16384):
            assert loss.first_tokens(tokenizer, doc["text"], n) == whole[:n]
