"""Model backends behind one small protocol: what the suites call to run a model.

``hf`` (transformers, CPU or CUDA) is the reference; other engines (vLLM) implement the same
methods so a suite never knows which one it talks to.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

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


@dataclass(frozen=True)
class Request:
    """One prompt for :meth:`Backend.generate_many`: greedy decoding and/or scoring a target."""

    ids: tuple[int, ...]
    max_new_tokens: int = 0          # 0: no decoding (a log-likelihood request)
    stop_at_eos: bool = True
    target: tuple[int, ...] = ()     # continuation to score: log p(target | ids), teacher-forced
    # With stop_at_eos: an EOS before any other token is decoded past instead of stopping (a
    # ChatML model closing the turn a prompt's leading <|im_start|> opened; tasks/needle.yaml).
    skip_leading_eos: bool = False


class Backend(Protocol):
    name: str

    @property
    def max_length(self) -> int:
        """Positions the model is meant to handle with its RoPE in force."""

    def generate(self, ids: list[int], max_new_tokens: int, stop_at_eos: bool = True,
                 skip_leading_eos: bool = False) -> Generation:
        """Greedy continuation of ``ids``: at most ``max_new_tokens``, stopping at EOS if asked."""

    def token_nll(self, ids: list[int]):
        """Teacher-forced negative log-likelihood of ``ids[1:]``, one value per position."""

    def generate_many(self, requests: list[Request]) -> Iterator[tuple[int, Generation]]:
        """Serve every request (in any order, yielding (index, result) as each finishes); outputs
        equal one :meth:`generate` per request. Backends share prompt prefixes between requests."""


class ModelBackend:
    """What every backend over a loaded model shares: its length, and one prompt as a batch of one."""

    loaded: "LoadedModel"
    shares_prefixes = False   # computes a prompt prefix once for every prompt that starts with it (the estimate reads it)

    @property
    def max_length(self) -> int:
        return self.loaded.max_positions

    def generate(self, ids: list[int], max_new_tokens: int, stop_at_eos: bool = True,
                 skip_leading_eos: bool = False) -> Generation:
        ((_, gen),) = self.generate_many([Request(tuple(ids), max_new_tokens, stop_at_eos,
                                                  skip_leading_eos=skip_leading_eos)])
        return gen
