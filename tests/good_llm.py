"""The good LLM of the conversion loop's tests: an OpenAI-compatible chat API on loopback that answers each prompt it
was taught with the traffic generator's right answer (``tests/conversion_traffic.py``).

The e2e fleet serves it as an ``endpoint`` model (``oracle``), so LLM-tier traffic is seeded through the router as a
user's would be, and the loop learns from answers that are right. It counts the calls it answers per task type, so a
test can tell which calls still reach the LLM tier. Unknown prompts get a fixed answer rather than an error.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.conversion_traffic import Prompt
from tests.ports import free_port

UNKNOWN_ANSWER = "I cannot tell."
MODEL_NAME = "good-llm"


class GoodLLM:
    """A loopback server for ``POST /v1/chat/completions``, plain or streamed (SSE), with usage counts."""

    def __init__(self) -> None:
        self.answers: dict[str, Prompt] = {}  # the last user message's text -> its prompt
        self.calls: Counter[str] = Counter()  # task type (or "unknown") -> calls answered
        self.bodies: list[dict[str, Any]] = []  # every request body, for tests of what the router sends
        self._lock = threading.Lock()
        llm = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                text, prompt_tokens = llm.answer(body)
                if body.get("stream"):
                    self._stream(text, prompt_tokens)
                else:
                    self._send(200, llm.completion(text, prompt_tokens))

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, text: str, prompt_tokens: int) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for chunk in llm.chunks(text, prompt_tokens):
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def learn(self, prompts: list[Prompt]) -> None:
        """Answer these prompts rightly from now on."""
        with self._lock:
            self.answers.update({_last_user_text(p.messages): p for p in prompts})

    def answer(self, body: dict[str, Any]) -> tuple[str, int]:
        """The right answer to the request's prompt, and a prompt-token count (words, as a stand-in tokenizer)."""
        text = _last_user_text(body.get("messages") or [])
        with self._lock:
            prompt = self.answers.get(text)
            self.calls[prompt.task if prompt else "unknown"] += 1
            self.bodies.append(body)
        return (prompt.answer if prompt else UNKNOWN_ANSWER), len(text.split())

    def completion(self, text: str, prompt_tokens: int) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-good-{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": MODEL_NAME,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": _usage(text, prompt_tokens),
        }

    def chunks(self, text: str, prompt_tokens: int) -> list[dict[str, Any]]:
        """The answer word by word, a finish chunk, then the usage chunk (as OpenAI sends with include_usage)."""
        words = text.split(" ")
        pieces = [w if i == 0 else f" {w}" for i, w in enumerate(words)]
        base = {"id": f"chatcmpl-good-{time.monotonic_ns()}", "object": "chat.completion.chunk", "model": MODEL_NAME}
        made = [{**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
        made.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        made.append({**base, "choices": [], "usage": _usage(text, prompt_tokens)})
        return made

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    users = [m for m in messages if m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content or "")


def _usage(text: str, prompt_tokens: int) -> dict[str, int]:
    completion = max(1, len(text.split()))
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}
