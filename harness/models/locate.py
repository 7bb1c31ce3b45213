"""Where a ``--model`` or ``--tokenizer`` is: the embedded model's converted directory, a hub id's
snapshot in the Hugging Face cache (downloaded when the hub is reachable, read from the cache alone
when HF_HUB_OFFLINE=1), or a local directory; and what a run records as the model's identity."""

from __future__ import annotations

import json
from pathlib import Path

from harness import shapes
from harness.errors import UserError, first_line
from harness.models.convert import EMBEDDED, embedded_dir

# Files a hub snapshot needs here: config, tokenizer, safetensors weights (never pickled *.bin or code).
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


def locate(spec: str, what: str = "--model") -> Path:
    """The directory ``spec`` names: ``smollm2-135m`` -> the cached converted directory; a hub id ->
    its snapshot in the HF cache; a path -> itself (only its existence checked)."""
    if spec in EMBEDDED:
        return embedded_dir(spec)
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
        raise UserError(f"{what}: {spec!r}: the hub answered {first_line(exc)}") from None
