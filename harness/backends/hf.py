"""The transformers backend: greedy decoding with a KV cache, chunked prefill and prefix reuse.

Written as an explicit loop rather than ``model.generate`` so that the prefill computes logits
for the last position only (a 128K prompt's full-vocabulary logits would be tens of GB), the
prompt can be prefilled in chunks to bound activation memory, and decoding can stop at EOS.
It produces exactly ``generate(do_sample=False)``'s tokens (tests/test_backend.py checks).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from transformers import DynamicCache

from harness.backends import Generation, Request
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

    def generate(self, ids: list[int], max_new_tokens: int, stop_at_eos: bool = True) -> Generation:
        ((_, gen),) = self.generate_many([Request(tuple(ids), max_new_tokens, stop_at_eos)])
        return gen

    @torch.inference_mode()
    def generate_many(self, requests: list[Request]) -> Iterator[tuple[int, Generation]]:
        """Serve requests depth-first over their prefix tree, with one KV cache.

        Sorted lexicographically, the prompts are a depth-first walk of the tree of their shared
        prefixes (a needle grid: one haystack trunk, a branch at each needle). The cache keeps the
        tokens it holds; for the next prompt it is cropped back to the common prefix and only the
        rest is computed, so every edge of the tree is computed once, and no KV is ever copied.
        Each prompt's last token is always recomputed: its logits start the decoding.
        """
        device = self.model.device
        cache = DynamicCache(config=self.model.config)
        held: list[int] = []  # the tokens whose keys and values the cache holds, in order
        for index in sorted(range(len(requests)), key=lambda i: requests[i].ids):
            req = requests[index]
            start = time.perf_counter()
            ids = list(req.ids)
            keep = min(_common_prefix(held, ids), len(ids) - 1)
            if len(held) > keep:
                cache.crop(keep - len(held))
                del held[keep:]
            suffix = torch.tensor([ids[keep:]], dtype=torch.long, device=device)
            for s in range(0, suffix.shape[1], self.prefill_chunk):
                out = self.model(input_ids=suffix[:, s:s + self.prefill_chunk], cache=cache,
                                 use_cache=True, logits_to_keep=1)
            held.extend(ids[keep:])
            first = out.logits[0, -1]
            new: list[int] = []
            logits = first
            while req.max_new_tokens:
                token = int(logits.argmax())
                if req.stop_at_eos and token in self.eos:
                    break
                new.append(token)
                if len(new) >= req.max_new_tokens:
                    break
                step = torch.tensor([[token]], dtype=torch.long, device=device)
                logits = self.model(input_ids=step, cache=cache, use_cache=True, logits_to_keep=1).logits[0, -1]
                held.append(token)
            target_lp = None
            if req.target:
                if len(held) > len(ids):  # back to the prompt's end: the target follows the prompt
                    cache.crop(len(ids) - len(held))
                    del held[len(ids):]
                target = list(req.target)
                rows = [first[None]]
                if len(target) > 1:
                    rest = torch.tensor([target[:-1]], dtype=torch.long, device=device)
                    rows.append(self.model(input_ids=rest, cache=cache, use_cache=True).logits[0])
                    held.extend(target[:-1])
                logp = torch.log_softmax(torch.cat(rows).float(), dim=-1)
                target_lp = logp.gather(1, torch.tensor(target, device=device)[:, None])[:, 0].tolist()
            text = self.tok.decode(new, skip_special_tokens=True).strip()
            yield index, Generation(text=text, new_tokens=len(new), seconds=time.perf_counter() - start,
                                    target_logprobs=target_lp, reused_tokens=keep)

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


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # binary search on the first mismatch (prompts are long; list slices compare in C)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
