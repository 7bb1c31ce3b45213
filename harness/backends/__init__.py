"""Model backends behind one small protocol: what the suites call to run a model.

``hf`` (transformers, CPU or CUDA) is the reference; other engines (vLLM) implement the same
methods so a suite never knows which one it talks to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from harness.errors import UserError

if TYPE_CHECKING:
    from harness.models import LoadedModel


@dataclass
class Generation:
    text: str
    new_tokens: int
    seconds: float
    target_logprobs: list[float] | None = None  # log p of each target token, teacher-forced
    reused_tokens: int = 0                      # prompt tokens whose KV came from a shared prefix
    token_ids: tuple[int, ...] = ()             # the generated tokens (hf), after the stop rules
    peak_gib: float | None = None               # peak memory while computing it (hf: harness.memory)
    prefill_chunk: int | None = None            # hf: the smaller chunk of a retry after running out of memory
    decode_seconds: float | None = None         # hf: of ``seconds``, the decode steps' (a batch's: its share)


DECODINGS = ("greedy", "generation_config")   # a suite's --decoding: greedy, or what the model's config asks


@dataclass(frozen=True)
class Sampling:
    """Sampled decoding as a model's generation_config asks for it, applied as transformers'
    ``generate(do_sample=True)`` does: temperature, then top-k, then top-p, then one draw from the
    softmax; ``seed`` seeds the request's own generator (a suite derives it from the run's seed and
    the cell's key, so a rerun draws the same tokens)."""

    temperature: float = 1.0
    top_k: int = 0        # 0: off
    top_p: float = 1.0    # 1: off
    seed: int = 0

    def for_cell(self, seed: int, key: str) -> "Sampling":
        digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
        return replace(self, seed=int.from_bytes(digest[:8], "big") >> 1)

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}


# What else a generation_config can ask of sampling, each with the values that mean "off" (generate's
# defaults): a config that sets one otherwise is refused rather than sampled differently.
UNAPPLIED = (("repetition_penalty", (None, 1.0)), ("min_p", (None,)), ("typical_p", (None, 1.0)),
             ("top_h", (None,)), ("epsilon_cutoff", (None, 0.0)), ("eta_cutoff", (None, 0.0)),
             ("no_repeat_ngram_size", (None, 0)), ("num_beams", (None, 1)))


def generation_config_sampling(model: Any, path: Path | None) -> Sampling | None:
    """What a model's generation_config asks for: :class:`Sampling` when it sets ``do_sample``, None
    (greedy) when it does not or there is none. A served model's is read from its tokenizer's
    directory, where one is there. Unset values take transformers' defaults (temperature 1, top-k 50,
    top-p 1), as ``generate`` does."""
    config = getattr(model, "generation_config", None)
    if config is None and path is not None and (Path(path) / "generation_config.json").is_file():
        from transformers import GenerationConfig

        config = GenerationConfig.from_pretrained(path)
    if config is None or not getattr(config, "do_sample", False):
        return None
    for name, off in UNAPPLIED:
        if getattr(config, name, None) not in off:
            raise UserError(f"--decoding generation_config: the model's generation_config sets {name}="
                            f"{getattr(config, name)!r}, which the harness does not apply; decode with greedy")
    temperature, top_k, top_p = (getattr(config, k, None) for k in ("temperature", "top_k", "top_p"))
    return Sampling(1.0 if temperature is None else float(temperature), 50 if top_k is None else int(top_k),
                    1.0 if top_p is None else float(top_p))


@dataclass(frozen=True)
class Request:
    """One prompt for :meth:`Backend.generate_many`: decoding (greedy unless ``sampling``) and/or
    scoring a target."""

    ids: tuple[int, ...]
    max_new_tokens: int = 0          # 0: no decoding (a log-likelihood request)
    stop_at_eos: bool = True
    target: tuple[int, ...] = ()     # continuation to score: log p(target | ids), teacher-forced
    # With stop_at_eos: an EOS before any other token is decoded past instead of stopping (a
    # ChatML model closing the turn a prompt's leading <|im_start|> opened; tasks/needle.yaml).
    skip_leading_eos: bool = False
    sampling: Sampling | None = None  # None: greedy
    # Dynamic RoPE only: the longest sequence the rotary state has seen before this prompt (the
    # reference's cache, which never shrinks, carried from the cells before it); 0: reset first.
    rope_seen: int = 0


class Backend(Protocol):
    name: str

    @property
    def max_length(self) -> int:
        """Positions the model is meant to handle with its RoPE in force."""

    def generate(self, ids: list[int], max_new_tokens: int, stop_at_eos: bool = True,
                 skip_leading_eos: bool = False, sampling: "Sampling | None" = None) -> Generation:
        """Greedy (or ``sampling``) continuation of ``ids``: at most ``max_new_tokens``, stopping at EOS if asked."""

    def token_nll(self, ids: list[int]):
        """Teacher-forced negative log-likelihood of ``ids[1:]``, one value per position."""

    def generate_many(self, requests: list[Request]) -> Iterator[tuple[int, Generation]]:
        """Serve every request (in any order, yielding (index, result) as each finishes); outputs
        equal one :meth:`generate` per request. Backends share prompt prefixes between requests."""


class ModelBackend:
    """What every backend over a loaded model shares: its length, and one prompt as a batch of one."""

    loaded: "LoadedModel"
    shares_prefixes = False   # computes a prompt prefix once for every prompt that starts with it (the estimate reads it)
    dynamic_rope = False      # its RoPE base follows the longest sequence seen (a Request's rope_seen applies)

    @property
    def max_length(self) -> int:
        return self.loaded.max_positions

    def generate(self, ids: list[int], max_new_tokens: int, stop_at_eos: bool = True,
                 skip_leading_eos: bool = False, sampling: Sampling | None = None) -> Generation:
        ((_, gen),) = self.generate_many([Request(tuple(ids), max_new_tokens, stop_at_eos,
                                                  skip_leading_eos=skip_leading_eos, sampling=sampling)])
        return gen
