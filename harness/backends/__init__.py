"""Model backends behind one small protocol: what the suites call to run a model.

``hf`` (transformers, CPU or CUDA) is the reference; other engines (vLLM) implement the same
methods so a suite never knows which one it talks to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class Generation:
    text: str
    new_tokens: int
    seconds: float


class Backend(Protocol):
    name: str

    @property
    def max_length(self) -> int:
        """Positions the model is meant to handle with its RoPE in force."""

    def generate(self, ids: list[int], max_new_tokens: int, stop_at_eos: bool = True) -> Generation:
        """Greedy continuation of ``ids``: at most ``max_new_tokens``, stopping at EOS if asked."""

    def token_nll(self, ids: list[int]):
        """Teacher-forced negative log-likelihood of ``ids[1:]``, one value per position."""
