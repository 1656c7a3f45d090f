"""A small OpenAI-compatible chat-completions server on 127.0.0.1: the local oracle judge and the tests.

The HTTP part is generic: answers come from `reply(messages) -> text`. Requests that carry `tools`
(function calling, as alpaca_eval's *_fn annotators send) get the text back as the arguments of a
tool call to the requested function. A request with `logprobs: true` gets OpenAI-format token
log-probs: a plain-text answer is one token of log-prob 0 (certain); a reply function can instead
return `Reply(text, top_logprobs)` to say how likely each candidate token was (alpaca_eval's
weighted annotators read exactly that). Faults can be queued; each request consumes the next one:

    with ChatServer(lambda messages: "More helpful: A") as server:
        server.fail(429, times=2)      # HTTP 429 for the next two requests
        server.stall(2.0)              # then one request answered only after 2 s
        server.garble()                # then one answer with no verdict in it
        client = openai.OpenAI(base_url=server.base_url, api_key="k")
    server.requests, server.answered, server.auth_headers
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

GARBAGE = "Both have merits; it is hard to say which one I would pick."
PATHS = ("/v1/chat/completions", "/chat/completions")


@dataclass
class _Fault:
    status: int | None = None  # answer with this HTTP error status
    stall_s: float = 0.0  # wait this long before answering normally
    garbage: bool = False  # answer with text that has no verdict


@dataclass(frozen=True)
class Reply:
    """An answer plus its candidate first tokens' log-probs (token -> logprob), for logprobs requests."""
    text: str
    top_logprobs: dict[str, float]


def _token(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": float(logprob), "bytes": list(token.encode("utf-8"))}


def _logprobs(answer, top_n) -> dict:
    """OpenAI's choices[0].logprobs for a one-token answer: the top `top_n` candidates, likeliest first."""
    if not isinstance(answer, Reply):
        answer = Reply(answer, {answer: 0.0})
    ranked = sorted(answer.top_logprobs.items(), key=lambda item: -item[1])[:max(int(top_n or 0), 1)]
    # the sampled token is the answer's text; a candidate list that lacks it ranks it below the rest
    chosen = _token(answer.text, answer.top_logprobs.get(answer.text, ranked[-1][1]))
    return {"content": [{**chosen, "top_logprobs": [_token(t, lp) for t, lp in ranked]}], "refusal": None}


def _count_tokens(text: str | None) -> int:
    return len((text or "").split())  # word count: deterministic and good enough for usage totals


class ChatServer:
    def __init__(self, reply: Callable[[list[dict]], str], host: str = "127.0.0.1", port: int = 0):
        self.reply = reply
        self.requests = 0  # every POST to the endpoint, failed ones included
        self.answered = 0  # 200 answers sent
        self.auth_headers: list[str] = []
        self.bodies: list[dict] = []
        self._faults: deque[_Fault] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def fail(self, status: int, times: int = 1) -> None:
        self._queue(_Fault(status=status), times)

    def stall(self, seconds: float, times: int = 1) -> None:
        self._queue(_Fault(stall_s=seconds), times)

    def garble(self, times: int = 1) -> None:
        self._queue(_Fault(garbage=True), times)

    def _queue(self, fault: _Fault, times: int) -> None:
        with self._lock:
            self._faults.extend([fault] * times)

    def _next_fault(self) -> _Fault | None:
        with self._lock:
            self.requests += 1
            return self._faults.popleft() if self._faults else None

    def start(self) -> "ChatServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases stalled handlers
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _completion(self, body: dict, garbage: bool = False) -> dict:
        messages = body.get("messages") or []
        answer = GARBAGE if garbage else self.reply(messages)
        text = answer.text if isinstance(answer, Reply) else answer
        message: dict = {"role": "assistant", "content": text}
        finish = "stop"
        if body.get("tools"):
            choice = body.get("tool_choice")
            name = choice["function"]["name"] if isinstance(choice, dict) else body["tools"][0]["function"]["name"]
            call = {"id": f"call_{self.requests}", "type": "function", "function": {"name": name, "arguments": text}}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish = "tool_calls"
        prompt_tokens = sum(_count_tokens(m.get("content")) for m in messages if isinstance(m.get("content"), str))
        completion_tokens = _count_tokens(text)
        return {
            "id": f"chatcmpl-{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "test-model"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": _logprobs(answer, body.get("top_logprobs")) if body.get("logprobs") else None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timed out) before we answered

            def do_POST(self):
                if self.path.split("?")[0] not in PATHS:
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.auth_headers.append(self.headers.get("Authorization", ""))
                    server.bodies.append(body)
                fault = server._next_fault()
                if fault and fault.status:
                    error = {"message": f"injected HTTP {fault.status}", "type": "injected", "code": fault.status}
                    self._send(fault.status, {"error": error})
                    return
                if fault and fault.stall_s:
                    server._stopping.wait(fault.stall_s)
                try:
                    payload = server._completion(body, garbage=bool(fault and fault.garbage))
                except (KeyError, ValueError) as exc:  # a request the reply function cannot answer
                    # 400, not 500: a client must not retry what can never succeed.
                    self._send(400, {"error": {"message": str(exc), "type": "invalid_request_error"}})
                    return
                except Exception as exc:  # noqa: BLE001 - a broken reply function becomes an HTTP 500
                    self._send(500, {"error": {"message": f"reply failed: {exc}", "type": "server_error"}})
                    return
                self._send(200, payload)
                with server._lock:
                    server.answered += 1

        return Handler
