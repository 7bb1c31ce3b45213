"""The transformers backend: greedy decoding with a KV cache and chunked prefill.

Written as an explicit loop rather than ``model.generate`` so that the prefill computes logits
for the last position only (a 128K prompt's full-vocabulary logits would be tens of GB), the
prompt can be prefilled in chunks to bound activation memory, and decoding can stop at EOS.
It produces exactly ``generate(do_sample=False)``'s tokens (tests/test_backend.py checks).
"""

from __future__ import annotations

import time

import torch
from transformers import DynamicCache

from harness.backends import Generation
from harness.models import LoadedModel


class HFBackend:
    name = "hf"

    def __init__(self, loaded: LoadedModel, prefill_chunk: int = 8192):
        self.loaded = loaded
        self.model = loaded.model
        self.tok = loaded.tokenizer
        self.prefill_chunk = prefill_chunk
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tok.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) - {None}

    @property
    def max_length(self) -> int:
        return self.loaded.max_positions

    @torch.inference_mode()
    def generate(self, ids: list[int], max_new_tokens: int, stop_at_eos: bool = True) -> Generation:
        start = time.perf_counter()
        device = self.model.device
        prompt = torch.tensor([ids], dtype=torch.long, device=device)
        cache = DynamicCache(config=self.model.config)
        for s in range(0, prompt.shape[1], self.prefill_chunk):
            out = self.model(input_ids=prompt[:, s:s + self.prefill_chunk], cache=cache,
                             use_cache=True, logits_to_keep=1)
        new: list[int] = []
        while True:
            token = int(out.logits[0, -1].argmax())
            if stop_at_eos and token in self.eos:
                break
            new.append(token)
            if len(new) >= max_new_tokens:
                break
            step = torch.tensor([[token]], dtype=torch.long, device=device)
            out = self.model(input_ids=step, cache=cache, use_cache=True, logits_to_keep=1)
        text = self.tok.decode(new, skip_special_tokens=True).strip()
        return Generation(text=text, new_tokens=len(new), seconds=time.perf_counter() - start)

    @torch.inference_mode()
    def token_nll(self, ids: list[int], chunk: int = 2048) -> torch.Tensor:
        """Teacher-forced negative log-likelihood of ``ids[1:]``, one value per position (fp32).

        The sequence goes through the model in chunks with a KV cache, so memory holds one
        chunk's logits at a time, never ``[len(ids), vocab]``.
        """
        device = self.model.device
        seq = torch.tensor([ids], dtype=torch.long, device=device)
        cache = DynamicCache(config=self.model.config)
        out = []
        for s in range(0, seq.shape[1] - 1, chunk):
            part = seq[:, s:s + chunk]
            logits = self.model(input_ids=part, cache=cache, use_cache=True).logits[0].float()
            targets = seq[0, s + 1:s + 1 + part.shape[1]]
            logits = logits[:len(targets)]
            out.append(torch.logsumexp(logits, -1) - logits.gather(1, targets[:, None])[:, 0])
        return torch.cat(out).cpu()
