"""The OpenAI-compatible backend: a served model (``vllm serve``, SGLang, ...) through /v1/completions.

What a lab evaluates is often an endpoint, not a checkpoint. As RULER's ``openai`` framework does,
prompts are built with the model's own tokenizer (``--tokenizer``, by default ``--model``) and sent
as token ids, so a cell's length is exact; the server never re-tokenizes the text.

- Greedy: ``temperature 0``, ``max_tokens`` as the suite says. The stop rules are the HF backend's:
  decoding stops at EOS unless a suite says otherwise (vLLM's ``ignore_eos``), and the generated
  token ids come back (vLLM's ``return_tokens_as_token_ids``) to be cut and decoded here exactly as
  the offline backends do; a server that returns text only is taken at its text.
- Log-likelihoods of a target (the needle's ``loglik`` scorer) from the prompt's own log-probabilities
  (``echo`` + ``logprobs``, as lm-eval's local-completions asks); a server that gives none is refused
  with one line.
- At most ``max_concurrent`` requests in flight; 429 and 5xx answers and dropped connections are
  retried with exponential backoff (a ``Retry-After`` is honoured); results are yielded as each
  request finishes, so the runner stores every cell as it completes.

The API key, when the server needs one, comes from ``OPENAI_API_KEY``.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed

from harness.backends import Generation, ModelBackend, Request
from harness.errors import UserError

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
TOKEN_ID = "token_id:"   # vLLM's return_tokens_as_token_ids spelling of a token


class OpenAIBackend(ModelBackend):
    name = "openai"
    shares_prefixes = False   # the server's prefix cache is its own
    local = False             # its compute is not this machine's: no FLOP estimate, no remembered rate

    def __init__(self, *, base_url: str, model: str, max_concurrent: int = 8, retries: int = 6,
                 timeout: float = 3600.0, backoff: float = 1.0):
        """A client of ``model`` at ``base_url``; :meth:`bind` gives it the model's tokenizer side
        (built from what :meth:`served_max_len` reports) before any prompt is sent."""
        self.loaded = None
        self.tok = None
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_concurrent = max_concurrent
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff

    def bind(self, loaded) -> "OpenAIBackend":
        self.loaded, self.tok = loaded, loaded.tokenizer
        return self

    # -- HTTP ---------------------------------------------------------------------------------------

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get("OPENAI_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def call(self, path: str, payload: dict | None = None, retries: int | None = None) -> dict:
        """One request (GET without a payload), retried on 429/5xx and dropped connections."""
        url = f"{self.base_url}{path}"
        data = None if payload is None else json.dumps(payload).encode()
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            req = urllib.request.Request(url, data=data, headers=self._headers(),
                                         method="GET" if data is None else "POST")
            wait = None
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                body = exc.read().decode(errors="replace")
                if exc.code not in RETRY_STATUS or attempt == retries:
                    raise UserError(f"--base-url: {url} answered {exc.code}: {_message(body)}") from None
                wait = _retry_after(exc.headers.get("Retry-After"))
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                if attempt == retries:
                    reason = getattr(exc, "reason", exc)
                    raise UserError(f"--base-url: cannot reach {url} ({reason}) after {retries + 1} "
                                    f"tries; is the server running?") from None
            except json.JSONDecodeError:
                raise UserError(f"--base-url: {url} did not answer JSON; an OpenAI-compatible server "
                                f"(e.g. `vllm serve`) serves /v1/completions") from None
            time.sleep(wait if wait is not None else self.backoff * 2 ** attempt * (0.5 + random.random() / 2))
        raise AssertionError("unreachable")

    def served_max_len(self) -> int | None:
        """The served model's context length from /v1/models (vLLM reports ``max_model_len``); checks
        that ``model`` is served there."""
        listed = self.call("/v1/models", retries=2).get("data") or []
        ids = [m.get("id") for m in listed if isinstance(m, dict)]
        match = [m for m in listed if isinstance(m, dict) and m.get("id") == self.model]
        if not match:
            raise UserError(f"--model: {self.base_url} serves no model {self.model!r}; it serves: "
                            f"{', '.join(map(str, ids)) or 'none'}")
        length = match[0].get("max_model_len")
        return int(length) if isinstance(length, int) and length > 0 else None

    def check_prompt_logprobs(self) -> None:
        """One two-token scoring request: a server without prompt log-probabilities is refused before
        a run directory is made, not at its first cell."""
        token = self.tok.eos_token_id if self.tok.eos_token_id is not None else 0
        self._target_logprobs(Request((token,), target=(token,)))

    # -- the backend protocol ----------------------------------------------------------------------

    def generate_many(self, requests: list[Request]) -> Iterator[tuple[int, Generation]]:
        with ThreadPoolExecutor(max_workers=self.max_concurrent, thread_name_prefix="openai") as pool:
            futures = {pool.submit(self._serve, req): i for i, req in enumerate(requests)}
            try:
                for fut in as_completed(futures):
                    yield futures[fut], fut.result()
            finally:
                for fut in futures:
                    fut.cancel()

    def _serve(self, req: Request) -> Generation:
        start = time.perf_counter()
        text, tokens, cached = "", 0, 0
        if req.max_new_tokens:
            text, tokens, cached = self._complete(req)
        logprobs = self._target_logprobs(req) if req.target else None
        return Generation(text=text, new_tokens=tokens, seconds=time.perf_counter() - start,
                          target_logprobs=logprobs, reused_tokens=cached)

    def _complete(self, req: Request) -> tuple[str, int, int]:
        payload = {"model": self.model, "prompt": list(req.ids), "max_tokens": req.max_new_tokens,
                   "temperature": 0.0, "logprobs": 0,
                   # vLLM's extensions (other servers ignore what they do not know):
                   "ignore_eos": not req.stop_at_eos or req.skip_leading_eos,
                   "skip_special_tokens": True, "return_tokens_as_token_ids": True}
        if req.sampling is not None:   # the model's generation_config (top_k: a vLLM extension)
            payload.update(temperature=req.sampling.temperature, top_p=req.sampling.top_p, seed=req.sampling.seed)
            if req.sampling.top_k:
                payload["top_k"] = req.sampling.top_k
        choice, usage = self._choice(self.call("/v1/completions", payload))
        details = usage.get("prompt_tokens_details") or {}
        cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
        ids = _token_ids((choice.get("logprobs") or {}).get("tokens"))
        if ids is None:   # a server that returns text only
            return str(choice.get("text", "")).strip(), int(usage.get("completion_tokens") or 0), cached
        ids = ids[:req.max_new_tokens]
        eos = self.tok.eos_token_id
        if req.stop_at_eos and req.skip_leading_eos:
            lead = next((i for i, t in enumerate(ids) if t != eos), len(ids))
            ids = ids[:next((i for i in range(lead, len(ids)) if ids[i] == eos), len(ids))]
        elif req.stop_at_eos and eos in ids:
            ids = ids[:ids.index(eos)]
        return self.tok.decode(ids, skip_special_tokens=True).strip(), len(ids), cached

    def _target_logprobs(self, req: Request) -> list[float]:
        ids = list(req.ids) + list(req.target)
        payload = {"model": self.model, "prompt": ids, "max_tokens": 1, "temperature": 0.0,
                   "echo": True, "logprobs": 0, "return_tokens_as_token_ids": True}
        choice, _ = self._choice(self.call("/v1/completions", payload))
        lp = choice.get("logprobs") or {}
        values = lp.get("token_logprobs")
        if not isinstance(values, list) or len(values) < len(ids):
            raise UserError(f"--backend openai: {self.base_url} gives no prompt log-probabilities (echo with "
                            f"logprobs); the loglik scorer needs them (vLLM gives them): use --scorer generate")
        echoed = _token_ids(lp.get("tokens"))
        if echoed is not None and echoed[:len(ids)] != ids:
            raise UserError(f"--backend openai: {self.base_url} echoed other tokens than were sent; a server "
                            f"that re-tokenizes prompts cannot score them")
        return [float(v) for v in values[len(req.ids):len(ids)]]

    def _choice(self, answer: dict) -> tuple[dict, dict]:
        choices = answer.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise UserError(f"--base-url: {self.base_url}/v1/completions answered without choices: "
                            f"{json.dumps(answer)[:200]}")
        usage = answer.get("usage")
        return choices[0], usage if isinstance(usage, dict) else {}

    def token_nll(self, ids: list[int]):
        raise UserError("--backend openai: the loss suite needs the model itself; run it with --backend hf")


def _token_ids(tokens) -> list[int] | None:
    """Token ids from vLLM's ``token_id:N`` strings; None when the server returned token texts."""
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t.startswith(TOKEN_ID) for t in tokens):
        return None
    try:
        return [int(t[len(TOKEN_ID):]) for t in tokens]
    except ValueError:
        return None


def _retry_after(value: str | None) -> float | None:
    try:
        return min(max(float(value), 0.0), 120.0) if value is not None else None
    except ValueError:
        return None


def _message(body: str) -> str:
    """The error message an OpenAI-style server puts in its JSON body, else the body's first line."""
    try:
        err = json.loads(body).get("error", body)
        text = err.get("message", err) if isinstance(err, dict) else err
    except (json.JSONDecodeError, AttributeError):
        text = body
    return (str(text).strip().splitlines() or ["(empty)"])[0][:300]
