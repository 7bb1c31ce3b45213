"""Each backend's own flags, declared once (harness.config) and checked by the backend's own
``check``, as suites own theirs through their ``Options``: `harness run`, ``harness.run`` and
``prepare`` loop over this registry instead of naming flags. A flag given for a backend that is not
the one chosen is refused with one line.

Light on purpose (no torch): the command line is built from it before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from harness.config import setting
from harness.errors import UserError


@dataclass(frozen=True)
class HFOptions:
    about: ClassVar[str] = "transformers"
    fast: bool = setting(False, "hf: split-causal attention over cached prefixes (CPU) and batched decoding of "
                         "equal-length cells; faster, outputs equal the exact ones only up to bf16 rounding.")
    attn: str = setting("auto", "hf: attention kernel: auto (flash_attention_2 on CUDA with flash-attn, else sdpa), "
                        "sdpa, flash_attention_2, flex_attention or eager.")
    prefill_chunk: str = setting("auto", "hf: prompt tokens per prefill forward: auto (CUDA: the whole prompt where "
                                 "free memory holds it, else the largest chunk that fits; CPU: 8k) or a number, e.g. 8k.",
                                 metavar="auto|N")
    # Options added after run directories existed: they key a run (its directory, an ablation) only when given.
    keyed_when_given: ClassVar[frozenset] = frozenset({"prefill_chunk"})

    def check(self, request) -> None:
        from harness import models
        from harness.backends import prefill

        models.attn_implementation(models.parse_device(request.device), self.attn)
        prefill.parse_chunk(self.prefill_chunk)

    def chunk(self) -> int | str:
        from harness.backends import prefill

        return prefill.parse_chunk(self.prefill_chunk)


@dataclass(frozen=True)
class VLLMOptions:
    about: ClassVar[str] = "offline vLLM, which batches and caches prefixes itself"
    tensor_parallel: int = setting(1, "vllm: GPUs per model.")

    def check(self, request) -> None:
        if self.tensor_parallel < 1:
            raise UserError(f"--tensor-parallel: {self.tensor_parallel} must be at least 1")
        from harness.backends import vllm

        vllm.check_installed()


@dataclass(frozen=True)
class OpenAIOptions:
    about: ClassVar[str] = "a served model"
    base_url: str | None = setting(None, "openai: the server's root, e.g. http://localhost:8000 (`vllm serve`); "
                                   "OPENAI_API_KEY is sent when set.", metavar="URL")
    max_concurrent: int = setting(8, "openai: requests in flight at most.")

    def check(self, request) -> None:
        if not self.base_url:
            raise UserError("--backend openai: give --base-url, the server's root (e.g. http://localhost:8000 "
                            "for `vllm serve`)")
        if not self.base_url.startswith(("http://", "https://")):
            raise UserError(f"--base-url: {self.base_url!r} is not an http:// or https:// URL")
        if not 1 <= self.max_concurrent <= 1024:
            raise UserError(f"--max-concurrent: {self.max_concurrent} is outside 1..1024")
        for flag, given in (("--rope-theta", request.rope_theta is not None),
                            ("--rope-scaling", request.rope_scaling is not None),
                            ("--dtype", request.dtype != "auto"), ("--device", request.device is not None)):
            if given:
                raise UserError(f"{flag}: a served model's {flag[2:]} is the server's; set it where the server "
                                f"starts (e.g. vllm serve --hf-overrides / --dtype)")


# The registry: a new backend adds its Options here (and its class where harness.evaluate builds it).
BACKENDS: dict[str, type] = {"hf": HFOptions, "vllm": VLLMOptions, "openai": OpenAIOptions}
