"""The transformers backend: greedy decoding with a KV cache, chunked prefill and prefix reuse.

Written as an explicit loop rather than ``model.generate`` so that the prefill computes logits
for the last position only (a 128K prompt's full-vocabulary logits would be tens of GB), the
prompt can be prefilled in chunks to bound activation memory, and decoding can stop at EOS.
It produces exactly ``generate(do_sample=False)``'s tokens (tests/test_backend.py checks); a
request with ``sampling`` gets ``generate(do_sample=True)``'s from the same seed.
"""

from __future__ import annotations

import inspect
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from harness import oom
from harness.backends import Generation, ModelBackend, Request, Sampling, attention, prefill
from harness.backends.kv_cache import PreallocatedCache, check_config
from harness.memory import PeakMemory
from harness.models import LoadedModel

MIN_PREFILL_CHUNK = prefill.MIN_CHUNK   # a retry after running out of memory halves the chunk, down to this


class HFBackend(ModelBackend):
    name = "hf"

    def __init__(self, loaded: LoadedModel, prefill_chunk: int | str = "auto", fast: bool = False,
                 decode_batch_tokens: int = 65536, free_memory=None):
        """``prefill_chunk``: tokens per prefill forward, or ``auto`` (harness/backends/prefill.py):
        on CUDA the whole prompt where the free memory holds it, else the largest chunk that fits;
        on a CPU 8,192, unless ``free_memory`` (a callable giving bytes) sizes it there too.

        ``fast``: split-causal attention for prompts continuing a cache on CPU (on CUDA it is always
        on: attention.py) and batched decoding of equal-length prompts. Faster, but the arithmetic is
        grouped differently, so in bf16 a greedy near-tie can flip: outputs equal the one-prompt-at-a-
        time ones only up to rounding. Off, on a CPU, every output is exactly the per-prompt one
        (tested in fp32; BENCHMARKS.md has both)."""
        self.loaded = loaded
        self.fast = fast
        self.decode_batch_tokens = decode_batch_tokens if fast else 0
        self.model = loaded.model
        self.tok = loaded.tokenizer
        self.prefill_chunk = prefill_chunk
        self._free = prefill.sizer(self.model.device, free_memory) if prefill_chunk == "auto" else None
        self._chunk = prefill_chunk if isinstance(prefill_chunk, int) else prefill.CPU_CHUNK   # the last one used
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tok.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        # Fast mode on CPU: prompts that continue a cache run split-causal attention (attention.py).
        # Dynamic RoPE (and its frozen variant) recomputes the base from the longest position a
        # forward has seen, and keeps it: chunked prefill, a shared prefix or the previous prompt
        # would change what a prompt gets. Each prompt is therefore prefilled whole, from a reset
        # rotary state and an empty cache, as a fresh transformers `generate` does.
        self._dynamic = "dynamic" in str(loaded.info.get("rope_parameters", {}).get("rope_type", ""))
        self.shares_prefixes = not self._dynamic
        self.dynamic_rope = self._dynamic
        # Each rotary embedding with the length below which transformers resets it to the loaded base.
        self._rotaries = [(m, getattr(m, "original_max_seq_len", m.max_seq_len_cached)) for m in self.model.modules()
                          if hasattr(m, "original_inv_freq") and hasattr(m, "max_seq_len_cached")]
        check_config(self.model.config)
        self.peak = PeakMemory(self.model.device)
        self._serving = 0   # tokens of the prompt being computed (where HARNESS_OOM_AT looks)
        self._attn = None
        config = self.model.config
        if (config._attn_implementation == "sdpa" and attention.applies(config)
                and (self.model.device.type == "cuda" or fast and self.model.device.type == "cpu")):
            self._attn = attention.register()
        self._attn_kind = "prefix" if self._attn else {"sdpa": "masked"}.get(config._attn_implementation,
                                                                           config._attn_implementation)

    def _forward(self, *, cache, **kwargs):
        """The model's forward with our KV cache (transformers < 5.24 names the argument past_key_values)."""
        oom.inject("eval", self._serving, kwargs["input_ids"].shape[1])
        return self.model(**{self._cache_arg: cache}, **kwargs)

    @contextmanager
    def _attention(self):
        """Switch the model to this backend's attention for the duration of its own calls."""
        if self._attn is None:
            yield
            return
        config = self.model.config
        saved, config._attn_implementation = config._attn_implementation, self._attn
        try:
            yield
        finally:
            config._attn_implementation = saved

    def generate_many(self, requests: list[Request]) -> Iterator[tuple[int, Generation]]:
        with self._attention(), torch.inference_mode():
            yield from self._generate_many(requests)

    def _generate_many(self, requests: list[Request]) -> Iterator[tuple[int, Generation]]:
        """Serve requests depth-first over their prefix tree, with one KV cache; decode in batches.

        Sorted lexicographically, the prompts are a depth-first walk of the tree of their shared
        prefixes (a needle grid: one haystack trunk, a branch at each needle). The cache keeps the
        tokens it holds; for the next prompt it is cropped back to the common prefix and only the
        rest is computed, so every edge of the tree is computed once. Each prompt's last token is
        always recomputed: its logits start the decoding.

        In fast mode, decoding reads every weight once per step whatever the batch, so prompts of
        one length (a grid's cells at one length all have exactly that many tokens: no padding)
        decode together: each one's KV is snapshotted after its prefill and the batch decodes once
        the group is complete, or when the snapshots waiting reach ``decode_batch_tokens`` tokens.
        Otherwise, and for a prompt too long to batch, decoding runs in place in the tree's cache.

        The cache is allocated once for the longest request (kv_cache.py): prefill chunks and decode
        steps write in place, and cropping to a common prefix moves a length. Each prompt's peak
        memory (memory.py) is recorded in its Generation.

        A prompt that runs out of memory is tried once more on a cache of its own (the tree's is
        dropped) with a smaller prefill chunk; if that fails too, the cache and the waiting
        snapshots are dropped and :class:`harness.oom.CellOutOfMemory` names the request (the
        caller goes on with the others in a new call). Prompts that fit get the same outputs.
        """
        capacity = _capacity(requests)
        cache = PreallocatedCache(self.model.config, capacity)
        held: list[int] = []  # the tokens whose keys and values the cache holds, in order
        order = sorted(range(len(requests)), key=lambda i: requests[i].ids)
        left = Counter(_group(requests[i]) for i in order if requests[i].max_new_tokens)
        waiting: dict[tuple, list[_Branch]] = {}
        for index in order:
            req = requests[index]
            start = time.perf_counter()
            self.peak.reset()
            alone = True   # decoded at once, in the tree's own cache
            if req.max_new_tokens:
                group = _group(req)
                left[group] -= 1
                cap = 0 if self._dynamic or req.sampling else self.decode_batch_tokens // len(req.ids)
                alone = cap < 2 or (left[group] == 0 and not waiting.get(group))
            if capacity < _capacity([req]):  # only after a retry sized the cache for one prompt
                cache, held, capacity = None, [], _capacity([req])
                cache = PreallocatedCache(self.model.config, capacity)
            branch, new = self._serve(index, req, cache, held, start, None, alone)
            if branch is None:
                cache = held = None   # what the failed attempt left, dropped before anything else
                branch, new, cache, held, capacity = self._retry(index, req, start, alone, capacity, waiting)
            if new is not None:
                yield index, self._finish(branch, new, time.perf_counter() - start)
                continue
            branch.seconds = time.perf_counter() - start
            waiting.setdefault(group, []).append(branch)
            if len(waiting[group]) >= cap or left[group] == 0:
                yield from self._decode_batch(waiting.pop(group))
            while sum(len(b.req.ids) for bs in waiting.values() for b in bs) > self.decode_batch_tokens:
                yield from self._decode_batch(waiting.pop(max(waiting, key=lambda g: len(waiting[g]) * g[0])))
        for group in list(waiting):
            yield from self._decode_batch(waiting.pop(group))

    def _retry(self, index: int, req: Request, start: float, alone: bool, capacity: int,
               waiting: dict) -> tuple["_Branch", list[int] | None, PreallocatedCache, list[int], int]:
        """A prompt that ran out of memory (the caller has dropped the tree's cache), tried once more
        on a cache of its own with a smaller prefill chunk. Returns its branch and new tokens, the
        cache, the tokens it holds and its capacity. If that fails too, the waiting snapshots are
        dropped and :class:`harness.oom.CellOutOfMemory` names the request."""
        oom.free()
        cache, held, branch, new = None, [], None, None
        failed = self._chunk
        chunk = self._retry_chunk(len(req.ids))
        if chunk is not None or capacity > _capacity([req]):
            capacity = _capacity([req])
            cache = PreallocatedCache(self.model.config, capacity)
            branch, new = self._serve(index, req, cache, held, start, chunk, alone)
        if branch is None:
            cache = None
            waiting.clear()
            oom.free()
            raise oom.CellOutOfMemory(f"out of memory on a prompt of {len(req.ids):,} tokens (prefill chunk "
                                      f"{failed}{f', then {chunk}' if chunk else ''})",
                                      [index], self.peak.gib())
        branch.chunk = chunk
        return branch, new, cache, held, capacity

    def _serve(self, index: int, req: Request, cache, held: list[int], start: float, chunk: int | None,
               alone: bool) -> tuple["_Branch | None", list[int] | None]:
        """One prompt in the tree's cache: prefilled from the longest prefix the cache holds, in
        chunks of ``chunk`` tokens (None: the backend's, :meth:`_chunk_for`); its target scored; decoded when ``alone``. Returns the branch and
        its new tokens (None: it waits for a batch, its KV snapshotted); (None, None) when it ran out
        of memory, the cache then unusable (the traceback, and the activations it holds, end here)."""
        self._serving = len(req.ids)
        try:
            ids = list(req.ids)
            keep = 0 if self._dynamic else min(_common_prefix(held, ids), len(ids) - 1)
            _crop(cache, held, keep)
            if self._dynamic:
                chunk = len(ids)
                self._reset_rope()
                self._carry_rope(req.rope_seen)
            self._chunk = chunk = chunk or self._chunk_for(len(ids) - keep, keep, cache)
            suffix = torch.tensor([ids[keep:]], dtype=torch.long, device=self.model.device)
            for s in range(0, suffix.shape[1], chunk):
                out = self._forward(input_ids=suffix[:, s:s + chunk], cache=cache, use_cache=True, logits_to_keep=1)
            held.extend(ids[keep:])
            branch = _Branch(index, req, out.logits[0, -1], keep, start)
            if req.target:
                branch.target_lp = self._score_target(branch, list(req.target), cache, held)
            branch.peak_gib = self.peak.gib()
            if not req.max_new_tokens:
                return branch, []
            if not alone:
                branch.kv = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
                return branch, None
            decoding = time.perf_counter()
            new, fed = self._decode([branch], cache)
            branch.decode_seconds = time.perf_counter() - decoding
            held.extend(fed)
            branch.peak_gib = self.peak.gib()
            return branch, new[0]
        except oom.Error:
            return None, None

    def _chunk_for(self, tokens: int, past: int, cache) -> int:
        """The prefill chunk for ``tokens`` new positions after ``past`` cached ones: the fixed one,
        or (``auto``) what the free memory holds, the KV cache's first allocation counted."""
        if isinstance(self.prefill_chunk, int):
            return self.prefill_chunk
        if self._free is None:
            return prefill.CPU_CHUNK
        dtype = self.model.dtype
        pending = 0 if cache.nbytes() else prefill.kv_bytes_per_token(self.model.config, dtype) * cache.capacity
        return prefill.choose(self.model.config, dtype, tokens, past, self._free(), pending, self._attn_kind)

    def _retry_chunk(self, tokens: int) -> int | None:
        """The prefill chunk of a retry after running out of memory: half the one that failed, down
        to MIN_PREFILL_CHUNK; None when it would not split a prompt of ``tokens`` any finer (dynamic
        RoPE prefills a prompt whole)."""
        smaller = max(self._chunk // 2, min(MIN_PREFILL_CHUNK, self._chunk))
        return smaller if not self._dynamic and tokens > smaller else None

    def _score_target(self, branch: "_Branch", target: list[int], cache, held: list[int]) -> list[float]:
        """log p of each target token after the prompt, teacher-forced; the cache goes back to the
        prompt's end afterwards (decoding, if asked, starts there)."""
        device = self.model.device
        end = len(held)
        rows = [branch.first[None]]
        if len(target) > 1:
            rest = torch.tensor([target[:-1]], dtype=torch.long, device=device)
            rows.append(self._forward(input_ids=rest, cache=cache, use_cache=True).logits[0])
            held.extend(target[:-1])
        logp = torch.log_softmax(torch.cat(rows).float(), dim=-1)
        _crop(cache, held, end)
        return logp.gather(1, torch.tensor(target, device=device)[:, None])[:, 0].tolist()

    def _reset_rope(self) -> None:
        """Every rotary embedding back to its state after loading (dynamic RoPE only changes it)."""
        for module, original in self._rotaries:
            module.register_buffer("inv_freq", module.original_inv_freq.clone(), persistent=False)
            module.original_max_seq_len = module.max_seq_len_cached = original

    def _carry_rope(self, seen: int) -> None:
        """Each rotary embedding as the reference's is after sequences of ``seen`` tokens (transformers
        4.3x's dynamic NTK cache, which only grows): the base for ``seen`` positions, computed by the
        model's own RoPE function, and kept for a shorter prompt, where transformers would go back to
        the loaded base (below its original length). Nothing to do when ``seen`` is not longer than
        what the loaded state covers."""
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        for module, _ in self._rotaries:
            if seen <= module.max_seq_len_cached:
                continue
            inv_freq, module.attention_scaling = ROPE_INIT_FUNCTIONS[module.rope_type](
                module.config, module.inv_freq.device, seq_len=seen)
            module.register_buffer("inv_freq", inv_freq, persistent=False)
            module.max_seq_len_cached = seen
            module.original_max_seq_len = 0   # no reset below the original length; _reset_rope restores it

    def _decode_batch(self, branches: list["_Branch"]) -> Iterator[tuple[int, Generation]]:
        start = time.perf_counter()
        self.peak.reset()
        req = branches[0].req
        self._serving = len(req.ids)
        new = None
        try:
            cache = PreallocatedCache.from_rows(self.model.config, [b.kv for b in branches], len(req.ids) + req.max_new_tokens)
            for b in branches:
                b.kv = None
            new, _ = self._decode(branches, cache)
        except oom.Error:
            pass
        cache = None
        if new is None:  # the snapshots are gone (or go now): every prompt of the batch is reported
            for b in branches:
                b.kv = None
            oom.free()
            raise oom.CellOutOfMemory(f"out of memory decoding {len(branches)} prompts of {len(req.ids):,} tokens "
                                      f"together (--fast)", [b.index for b in branches], self.peak.gib())
        share = (time.perf_counter() - start) / len(branches)
        peak = self.peak.gib()
        for b, tokens in zip(branches, new):
            b.peak_gib = max(b.peak_gib, peak)
            b.decode_seconds = share
            yield b.index, self._finish(b, tokens, b.seconds + share)

    def _decode(self, branches: list["_Branch"], cache) -> tuple[list[list[int]], list[int]]:
        """Greedy decoding of a batch whose KV is in ``cache``; returns each row's new tokens and
        the tokens fed to the cache (meaningful for a batch of one: what the cache now holds)."""
        req = branches[0].req  # one group: same length, budget and EOS rule
        logits = torch.stack([b.first for b in branches])
        new: list[list[int]] = [[] for _ in branches]
        active = [True] * len(branches)
        fed: list[int] = []
        while True:
            tokens = _choose(logits, branches)
            for row, token in enumerate(tokens):
                if not active[row]:
                    continue
                leading = req.skip_leading_eos and all(t in self.eos for t in new[row])
                if req.stop_at_eos and token in self.eos and not leading:
                    active[row] = False
                    continue
                new[row].append(token)
                active[row] = len(new[row]) < req.max_new_tokens
            if not any(active):
                return new, fed
            step = torch.tensor([[t] for t in tokens], dtype=torch.long, device=self.model.device)
            logits = self._forward(input_ids=step, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
            fed.append(tokens[0])

    def _finish(self, branch: "_Branch", tokens: list[int], seconds: float) -> Generation:
        text = self.tok.decode(tokens, skip_special_tokens=True).strip()
        return Generation(text=text, new_tokens=len(tokens), seconds=seconds, target_logprobs=branch.target_lp,
                          reused_tokens=branch.keep, token_ids=tuple(tokens), peak_gib=branch.peak_gib,
                          prefill_chunk=branch.chunk, decode_seconds=branch.decode_seconds)

    def token_nll(self, ids: list[int], chunk: int = 2048) -> torch.Tensor:
        with self._attention(), torch.inference_mode():
            return self._token_nll(ids, chunk)

    def _token_nll(self, ids: list[int], chunk: int) -> torch.Tensor:
        """Teacher-forced negative log-likelihood of ``ids[1:]``, one value per position (fp32).

        The sequence goes through the model in chunks with a KV cache, so memory holds one
        chunk's logits at a time, never ``[len(ids), vocab]``.
        """
        if self._dynamic:
            self._reset_rope()
            chunk = len(ids)
        self._serving = len(ids)
        device = self.model.device
        seq = torch.tensor([ids], dtype=torch.long, device=device)
        cache = PreallocatedCache(self.model.config, len(ids))
        out = []
        for s in range(0, seq.shape[1] - 1, chunk):
            part = seq[:, s:s + chunk]
            logits = self._forward(input_ids=part, cache=cache, use_cache=True).logits[0].float()
            targets = seq[0, s + 1:s + 1 + part.shape[1]]
            logits = logits[:len(targets)]
            out.append(torch.logsumexp(logits, -1) - logits.gather(1, targets[:, None])[:, 0])
        return torch.cat(out).cpu()


@dataclass
class _Branch:
    """A prompt prefilled in the tree, waiting for (or done with) its decoding."""

    index: int
    req: Request
    first: torch.Tensor          # logits after the prompt's last token
    keep: int                    # prompt tokens reused from the tree's cache
    start: float
    target_lp: list[float] | None = None
    kv: list | None = None       # per-layer (keys, values) snapshot while waiting for a batch
    seconds: float = 0.0
    peak_gib: float = 0.0        # peak memory while it was computed (memory.PeakMemory)
    chunk: int | None = None     # the smaller prefill chunk of a retry after running out of memory
    decode_seconds: float | None = None
    generator: torch.Generator | None = None   # sampled decoding: the request's own, seeded


def _choose(logits: torch.Tensor, branches: list[_Branch]) -> list[int]:
    """Each row's next token: the argmax, or a draw as ``generate(do_sample=True)`` makes it."""
    sampling = branches[0].req.sampling
    if sampling is None:
        return logits.argmax(-1).tolist()
    out = []
    for row, branch in zip(logits, branches):
        if branch.generator is None:
            branch.generator = torch.Generator(device=row.device).manual_seed(sampling.seed)
        out.append(_sample(row, sampling, branch.generator))
    return out


def _sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """transformers' warpers in generate's order (temperature, top-k, top-p; each only when it
    changes something, as generate builds them), then one multinomial draw, all in fp32."""
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    scores = logits.float()[None]
    ids = torch.zeros((1, 1), dtype=torch.long, device=scores.device)   # the warpers ignore the input ids
    if sampling.temperature != 1.0:
        scores = TemperatureLogitsWarper(sampling.temperature)(ids, scores)
    if sampling.top_k:
        scores = TopKLogitsWarper(sampling.top_k)(ids, scores)
    if sampling.top_p < 1.0:
        scores = TopPLogitsWarper(sampling.top_p)(ids, scores)
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, num_samples=1, generator=generator)[0, 0])


def _group(req: Request) -> tuple:
    return len(req.ids), req.max_new_tokens, req.stop_at_eos, req.skip_leading_eos, req.sampling


def _capacity(requests: list[Request]) -> int:
    """Positions the tree's cache can come to hold: a prompt, then its target or its decoding."""
    return max((len(r.ids) + max(r.max_new_tokens, len(r.target)) for r in requests), default=1)


def _crop(cache, held: list[int], keep: int) -> None:
    """Drop the cache's tokens past ``keep`` (and from ``held``, its token list)."""
    if len(held) > keep:
        cache.crop(keep - len(held))
        del held[keep:]


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
