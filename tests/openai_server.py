"""A small OpenAI-compatible completions server over the HF backend, for testing the openai backend.

It answers as ``vllm serve`` does for what the harness asks (/v1/models with ``max_model_len``;
/v1/completions with token-id prompts, ``logprobs``, ``echo``, ``ignore_eos``,
``return_tokens_as_token_ids``), computing with a real model through :class:`HFBackend`. Faults a
test wants are switches: answer the first N requests 429 or 503, drop logprobs, demand an API key,
hold each request a while (to see how many are in flight).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness.backends import Request


class Server:
    def __init__(self, loaded, name: str = "tiny", *, max_model_len: int | None = None, fail_first: int = 0,
                 fail_status: int = 429, logprobs: bool = True, api_key: str | None = None, hold: float = 0.0):
        from harness.backends.hf import HFBackend

        self.backend = HFBackend(loaded)
        self.tok = loaded.tokenizer
        self.name, self.max_model_len = name, max_model_len or loaded.max_positions
        self.fail_first, self.fail_status, self.logprobs = fail_first, fail_status, logprobs
        self.api_key, self.hold = api_key, hold
        self.received = 0
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()        # the model computes one request at a time
        self.count = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def complete(self, body: dict) -> dict:
        ids = [int(t) for t in body["prompt"]]
        eos = self.tok.eos_token_id
        max_tokens = int(body.get("max_tokens", 16))
        with self.lock:
            if body.get("echo"):
                nll = self.backend.token_nll(ids).tolist()
                (_, gen), = self.backend.generate_many([Request(tuple(ids), 1, stop_at_eos=False)])
                tokens, values = ids + list(gen.token_ids), [None] + [-v for v in nll] + [0.0]
            else:
                stop = not body.get("ignore_eos", False)
                (_, gen), = self.backend.generate_many([Request(tuple(ids), max_tokens, stop_at_eos=stop)])
                tokens = list(gen.token_ids)
                if stop and len(tokens) < max_tokens:
                    tokens.append(eos)   # vLLM returns the EOS it stopped at
                values = [0.0] * len(tokens)
        choice = {"index": 0, "text": self.tok.decode(tokens, skip_special_tokens=True),
                  "finish_reason": "length" if len(tokens) >= max_tokens else "stop"}
        if self.logprobs and body.get("logprobs") is not None:
            as_ids = body.get("return_tokens_as_token_ids")
            choice["logprobs"] = {"tokens": [f"token_id:{t}" if as_ids else self.tok.decode([t]) for t in tokens],
                                  "token_logprobs": values}
        return {"object": "text_completion", "model": self.name, "choices": [choice],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(tokens) - (len(ids) if body.get("echo") else 0)}}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, {"error": {"message": "Incorrect API key provided"}})
                    return False
                return True

            def do_GET(self):
                if not self._authorised():
                    return
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.name, "object": "model",
                                                                 "max_model_len": server.max_model_len}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self._authorised():
                    return
                with server.count:
                    server.received += 1
                    failing = server.received <= server.fail_first
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                # The answer is made while counted and sent after: a client that hears back may send its
                # next request at once, and must not find this one still counted.
                try:
                    if failing:
                        answer = (server.fail_status, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
                    elif body.get("model") != server.name:
                        answer = (404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
                    elif len(body["prompt"]) + int(body.get("max_tokens", 16)) > server.max_model_len:
                        answer = (400, {"error": {"message": "This model's maximum context length is "
                                                             f"{server.max_model_len} tokens."}})
                    else:
                        time.sleep(server.hold)
                        answer = (200, server.complete(body))
                finally:
                    with server.count:
                        server.in_flight -= 1
                self._send(*answer)

        return Handler
