"""Load a causal LM and its tokenizer for evaluation (or wrap one a server or a training loop holds),
with the device, dtype, attention kernel and RoPE in force recorded in ``LoadedModel.info``."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness import precision, rundir, shapes
from harness.errors import UserError, first_line
from harness.models.attention import attn_implementation
from harness.models.locate import locate, resolve
from harness.models.rope import (apply_rope, check_rope_theta, effective_positions, quiet_rope_validation,
                                 register_frozen_dynamic)


def parse_device(text: str | None) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` (default: cuda when available), checked against this machine."""
    accepted = "cpu, cuda or cuda:N"
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise UserError(f"--device: {text!r} is not known; accepted: {accepted}") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device: {text!r} is not supported; accepted: {accepted}")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {text}: this machine has no CUDA device torch can use "
                            f"(torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise UserError(f"--device {text}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return dev


def display_name(path: Path) -> str:
    source = path / "SOURCE.json"
    if source.is_file():
        return str(rundir.read_json(source, "--model").get("name", path.name))
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.split("--")[-1]   # HF cache: models--org--name/snapshots/<commit>
    return path.name


@dataclass
class LoadedModel:
    model: Any            # None when loaded without weights (a backend such as vLLM loads its own)
    tokenizer: Any
    path: Path
    info: dict = field(default_factory=dict)
    config: Any = None    # the HF config with the RoPE in force

    @property
    def max_positions(self) -> int:
        return self.info["effective_max_positions"]


def read_config(path: Path, what: str = "--model"):
    """The model's config, or one line naming the file and what transformers could not take."""
    from huggingface_hub.errors import StrictDataclassError  # transformers 5 validates config fields with it
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
        positions = config.max_position_embeddings
    except (ValueError, KeyError, TypeError, OSError, AttributeError, StrictDataclassError) as exc:
        raise UserError(f"{what}: {path / 'config.json'} cannot be read as a transformers config "
                        f"({first_line(exc)})") from None
    if isinstance(positions, bool) or not isinstance(positions, int) or positions < 1:
        raise UserError(f"{what}: {path / 'config.json'}: max_position_embeddings is {positions!r}; "
                        f"a positive whole number of positions is needed")
    return config


def read_tokenizer(path: Path, what: str = "--model"):
    """The model's tokenizer, or one line saying which directory has none that loads."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(f"{what}: no tokenizer loads from {path} ({first_line(exc)}); a model directory "
                        f"needs tokenizer.json (save the tokenizer with save_pretrained beside the weights)") from None


def read_weights(path: Path, config, what: str = "--model", **kwargs):
    """``from_pretrained`` with damaged or mismatched weight files as one line naming the directory."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return AutoModelForCausalLM.from_pretrained(path, config=config, **kwargs)
        except (SafetensorError, OSError, ValueError, KeyError, EOFError) as exc:
            raise UserError(f"{what}: the weights in {path} cannot be loaded ({first_line(exc)}); "
                            f"a truncated or damaged file? re-save or re-download the model") from None
        except RuntimeError as exc:
            if "mismatch" not in str(exc) and "state_dict" not in str(exc):
                raise
            raise UserError(f"{what}: the weights in {path} do not match its config.json "
                            f"({first_line(exc)})") from None


def _instantiate(path: Path, config, dtype: torch.dtype, attn: str, weights: bool):
    """The model with its weights, or (``weights=False``) its shapes on the meta device."""
    from transformers import AutoModelForCausalLM

    if weights:
        return read_weights(path, config, dtype=dtype, attn_implementation=attn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return AutoModelForCausalLM.from_config(config)
        except ValueError as exc:
            raise UserError(f"--model: {path} is not a causal LM transformers can load ({first_line(exc)})") from None


def _random(config, dtype: torch.dtype, attn: str, device: torch.device):
    """A shape with random weights (seed 0), initialised on ``device`` in ``dtype``."""
    from transformers import AutoModelForCausalLM

    config._attn_implementation = attn
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(previous)


def tokenizer_info(tokenizer, **extra) -> dict:
    return {"class": type(tokenizer).__name__, "vocab_size": len(tokenizer), **extra,
            "eos_token": tokenizer.eos_token, "bos_token": tokenizer.bos_token}


def load(spec: str, *, rope_theta: float | None = None, rope_scaling: tuple[str, float] | None = None,
         dtype: str = "auto", device: str | None = None, weights: bool = True, attn: str = "auto",
         tokenizer: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer for evaluation, RoPE overrides and dtype applied and recorded.

    ``dtype`` is ``auto`` (bf16 where the device computes it natively, else fp32: harness.precision),
    or bf16, fp32, fp16.
    ``weights=False`` reads config and tokenizer only (shapes on the meta device), for a backend
    that loads the weights itself.
    ``random:SHAPE`` (harness.shapes) builds that shape with random weights (seed 0) on the device,
    with ``tokenizer`` (default smollm2-135m): no weights file is read.
    """
    random = shapes.is_random(spec)
    if random and not weights:
        raise UserError(f"--model {spec}: random weights run on --backend hf (vLLM and servers load weights files)")
    path = resolve(spec, tokenizer)
    dev = parse_device(device)
    compute = precision.resolve(dtype, dev)
    if random:
        tokenizer = read_tokenizer(path, "--tokenizer")
        config = shapes.config(shapes.random_shape(spec), tokenizer, shapes.RANDOM_POSITIONS)
    else:
        config = read_config(path)
        tokenizer = read_tokenizer(path)  # before the weights: a missing tokenizer fails fast
    trained_max = int(config.max_position_embeddings)
    register_frozen_dynamic()
    with warnings.catch_warnings(), quiet_rope_validation():
        rope = apply_rope(config, check_rope_theta(rope_theta), rope_scaling)
    attn = attn_implementation(dev, attn)
    if random:
        model = _random(config, compute.torch_dtype, attn, dev)
    else:
        model = _instantiate(path, config, compute.torch_dtype, attn, weights)
    parameters = sum(p.numel() for p in model.parameters())
    if weights:
        model.to(dev).eval()
    else:
        model, attn = None, "backend's own"
    info = {
        "spec": spec,
        "path": str(path),
        "name": f"random-{shapes.random_shape(spec)}" if random else display_name(path),
        "model_type": config.model_type,
        "parameters": parameters,
        "dtype": compute.long_name,
        "precision": compute.record(),
        "device": str(dev),
        "attn_implementation": attn,
        "rope_parameters": rope,
        "rope_overrides": {"rope_theta": rope_theta,
                           "rope_scaling": list(rope_scaling) if rope_scaling else None},
        "max_position_embeddings": trained_max,
        "effective_max_positions": effective_positions(rope, trained_max),
        "tokenizer": tokenizer_info(tokenizer, **({"path": str(path)} if random else {})),
    }
    return LoadedModel(model=model, tokenizer=tokenizer, path=path, info=info, config=config)


def load_served(name: str, tokenizer_spec: str, served_max_len: int | None) -> LoadedModel:
    """A model behind a server (``--backend openai``): its tokenizer (and config, where the tokenizer's
    directory has one) here, the weights there. Positions: what the server reports, else the config's."""
    path = locate(tokenizer_spec, "--tokenizer")
    tokenizer = read_tokenizer(path, "--tokenizer")
    config = read_config(path, "--tokenizer") if (path / "config.json").is_file() else None
    positions = served_max_len or (int(config.max_position_embeddings) if config is not None else None)
    if positions is None:
        raise UserError(f"--tokenizer: {path} has no config.json and the server reports no max_model_len; "
                        f"give a model directory or hub id as --tokenizer so the model's positions are known")
    parameters = 0
    if config is not None:
        with warnings.catch_warnings(), contextlib.suppress(ValueError):
            warnings.simplefilter("ignore")
            from transformers import AutoModelForCausalLM

            with torch.device("meta"):
                parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    rope = dict(getattr(config, "rope_parameters", None) or {}) if config is not None else {}
    info = {
        "spec": name, "path": str(path), "name": name,
        "model_type": getattr(config, "model_type", None), "parameters": parameters,
        "dtype": "server's", "precision": {"dtype": "server", "requested": "server", "reason": "chosen by the server",
                                           "cpu_flags": []},
        "device": "server", "attn_implementation": "server's", "rope_parameters": rope,
        "rope_overrides": {"rope_theta": None, "rope_scaling": None},
        "max_position_embeddings": positions, "effective_max_positions": positions,
        "tokenizer": tokenizer_info(tokenizer, path=str(path)),
    }
    return LoadedModel(model=None, tokenizer=tokenizer, path=path, info=info, config=config)


def from_objects(model, tokenizer) -> LoadedModel:
    """A transformers model and tokenizer already in memory (a training loop's), evaluated as they
    are: their dtype, device and RoPE. Recorded as ``in-memory:NAME@FINGERPRINT``, the fingerprint
    taken from the weights so that a run directory never mixes two states of one model."""
    import hashlib

    config = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if config is None or not hasattr(model, "forward") or not isinstance(positions, int):
        raise UserError(f"model: a {type(model).__name__} is not a transformers causal LM (no config with "
                        f"max_position_embeddings); pass a PreTrainedModel, a directory or a hub id")
    if tokenizer is None or not callable(getattr(tokenizer, "encode", None)):
        raise UserError("tokenizer: a model object needs its tokenizer (tokenizer=AutoTokenizer.from_pretrained(...))")
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            digest.update(name.encode())
            digest.update(p.detach().flatten()[:64].float().cpu().numpy().tobytes())
    param = next(model.parameters())
    name = str(getattr(config, "_name_or_path", "") or type(model).__name__)
    rope = dict(getattr(config, "rope_parameters", None) or {"rope_type": "default",
                                                              "rope_theta": getattr(config, "rope_theta", 10000.0)})
    dtype = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}.get(param.dtype, str(param.dtype))
    info = {
        "spec": f"in-memory:{Path(name).name}@{digest.hexdigest()[:12]}", "path": name, "name": Path(name).name or name,
        "model_type": getattr(config, "model_type", None), "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(param.dtype).removeprefix("torch."),
        "precision": {"dtype": dtype, "requested": "as given", "reason": "the model object's own", "cpu_flags": []},
        "device": str(param.device), "attn_implementation": getattr(config, "_attn_implementation", None),
        "rope_parameters": rope, "rope_overrides": {"rope_theta": None, "rope_scaling": None},
        "max_position_embeddings": positions, "effective_max_positions": effective_positions(rope, positions),
        "tokenizer": tokenizer_info(tokenizer),
    }
    return LoadedModel(model=model, tokenizer=tokenizer, path=Path(name), info=info, config=config)
