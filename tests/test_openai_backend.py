"""The openai backend against an OpenAI-compatible server (tests/openai_server.py: the HF backend on the
tiny Llama behind real HTTP): the same outputs as the HF backend, retries, bounded concurrency, and
one line for every way a server or a flag can be wrong. `make test-vllm` runs the same grid through a
real `vllm serve` (tests/test_vllm_backend.py)."""

from __future__ import annotations

import json

import pytest

from harness import models
from harness.backends import Request
from harness.backends.openai import OpenAIBackend
from tests.conftest import one_line_error
from tests.openai_server import Server

GRID = ["--lengths", "256,512", "--depths", "0,50,100", "--protocol", "exact", "--scorer", "both",
        "--dtype", "fp32"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return models.load(str(tiny_model_dir), dtype="fp32")


def _results(out) -> dict:
    return {r["key"]: r for r in (json.loads(line) for line in (out / "results.jsonl").read_text().splitlines())}


def _run(argv: list[str]) -> None:
    from harness.cli import main

    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code in (0, None)


def test_served_grid_equals_the_hf_backend(tmp_path, tiny, tiny_model_dir):
    _run(["run", "--model", str(tiny_model_dir), *GRID, "--out", str(tmp_path / "hf")])
    # The first three requests are refused with 429: retried with backoff, nothing lost.
    with Server(tiny, fail_first=3, fail_status=429) as server:
        served = [a for a in GRID if a != "--dtype" and a != "fp32"]
        _run(["run", "--model", "tiny", "--backend", "openai", "--base-url", server.url, "--tokenizer",
              str(tiny_model_dir), "--max-concurrent", "3", *served, "--out", str(tmp_path / "served")])
    hf, got = _results(tmp_path / "hf"), _results(tmp_path / "served")
    assert sorted(hf) == sorted(got) and len(got) == 6
    for key, row in got.items():
        assert row["output"] == hf[key]["output"] and row["new_tokens"] == hf[key]["new_tokens"], key
        for name in ("paper", "exact", "word_recall", "answer_tokens"):
            assert row["scores"][name] == hf[key]["scores"][name], (key, name)
        assert row["scores"]["loglik"] == pytest.approx(hf[key]["scores"]["loglik"], abs=1e-3)
    assert server.received == 3 + 1 + 2 * 6   # 3 refused, the log-probability probe, a completion and a scoring request per cell
    manifest = json.loads((tmp_path / "served" / "manifest.json").read_text())
    assert manifest["config"]["backend"] == "openai" and manifest["config"]["model"]["id"] == "tiny"
    assert manifest["config"]["model"]["tokenizer"] == str(tiny_model_dir.resolve())
    assert manifest["model"]["base_url"] == server.url and manifest["model"]["max_position_embeddings"] == 2048


def test_requests_in_flight_are_bounded(tiny):
    reqs = [Request((1, 2, 3, i + 10), max_new_tokens=2) for i in range(8)]
    with Server(tiny, hold=0.2) as server:
        backend = OpenAIBackend(base_url=server.url, model="tiny", max_concurrent=3).bind(tiny)
        got = dict(backend.generate_many(reqs))
    assert sorted(got) == list(range(8))
    assert server.most_in_flight == 3


def test_api_key_comes_from_the_environment(tiny, monkeypatch):
    with Server(tiny, api_key="sk-test") as server:
        backend = OpenAIBackend(base_url=server.url, model="tiny").bind(tiny)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        assert backend.served_max_len() == 2048
        monkeypatch.setenv("OPENAI_API_KEY", "wrong")
        with pytest.raises(Exception, match="answered 401: Incorrect API key"):
            backend.served_max_len()


def test_server_faults_are_one_line(capsys, tmp_path, tiny, tiny_model_dir):
    out = tmp_path / "never"
    base = ["run", "--backend", "openai", "--tokenizer", str(tiny_model_dir), "--lengths", "256", "--depths", "50",
            "--out", str(out)]
    with Server(tiny, logprobs=False) as server:
        err = one_line_error(capsys, [*base[:1], "--model", "other", *base[1:], "--base-url", server.url])
        assert "serves no model 'other'; it serves: tiny" in err
        err = one_line_error(capsys, [*base[:1], "--model", "tiny", *base[1:], "--base-url", server.url,
                                      "--scorer", "loglik"])
        assert "gives no prompt log-probabilities" in err and "--scorer generate" in err
    with Server(tiny, fail_first=100, fail_status=500) as server:
        backend = OpenAIBackend(base_url=server.url, model="tiny", retries=2, backoff=0.01).bind(tiny)
        with pytest.raises(Exception, match="answered 500: slow down"):
            backend.generate(list(range(5, 20)), 2)
        assert server.received == 3
    with Server(tiny) as server:
        url = server.url
    err = one_line_error(capsys, [*base[:1], "--model", "tiny", *base[1:], "--base-url", url])
    assert "cannot reach" in err and "is the server running?" in err
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--backend", "openai"], "--backend openai: give --base-url"),
    (["--backend", "openai", "--base-url", "localhost:8000"], "is not an http:// or https:// URL"),
    (["--base-url", "http://localhost:8000"], "--base-url: only for --backend openai"),
    (["--tokenizer", "smollm2-135m"], "--tokenizer: only for --backend openai"),
    (["--backend", "openai", "--base-url", "http://x", "--max-concurrent", "0"], "--max-concurrent: 0 is outside"),
    (["--backend", "openai", "--base-url", "http://x", "--rope-theta", "5e5"], "--rope-theta: a served model's"),
    (["--backend", "openai", "--base-url", "http://x", "--dtype", "bf16"], "--dtype: a served model's"),
    (["--backend", "openai", "--base-url", "http://x", "--suite", "loss"], "the loss suite runs on --backend hf or vllm"),
    (["--backend", "openai", "--base-url", "http://x", "--suite", "regression"], "the regression suite runs on --backend hf"),
])
def test_bad_openai_flags(capsys, tmp_path, extra, message):
    out = tmp_path / "never"
    err = one_line_error(capsys, ["run", "--model", "tiny", *extra, "--out", str(out)])
    assert message in err
    assert not out.exists()
