"""A loopback server speaking the OpenAI chat-completions wire protocol (JSON and SSE),
plus plain HTTP endpoints for HTTP tool steps. What it does depends on the model asked for:

  stream        answers with the last user message in 3 chunks, then usage (11 in, 7 out)
  flaky-<id>    429 with Retry-After: 0 on the first request for that id, then `stream`
  always-429    429 every time
  server-error  500 every time
  bad-request   400 with an error message that quotes a key-like string
  slow          waits 5 s before answering
  malformed     an SSE chunk that is not JSON
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.attempts: Counter[str] = Counter()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._tool(self, "GET")

            def do_POST(self) -> None:
                if self.path.endswith("/chat/completions"):
                    fake._chat(self)
                else:
                    fake._tool(self, "POST")

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hung up (a killed server, a timed-out call) is expected

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()

    # -- chat completions ----------------------------------------------------------------

    @staticmethod
    def _json(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)

    def _chat(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length", "0"))
        body = json.loads(handler.rfile.read(length))
        self.requests.append(body)
        self.headers.append({k.lower(): v for k, v in handler.headers.items()})
        model = body["model"]
        self.attempts[model] += 1
        error = {"error": {"message": "", "type": "test", "code": None}}
        if model == "always-429" or (model.startswith("flaky-") and self.attempts[model] == 1):
            error["error"]["message"] = "slow down"
            return self._json(handler, 429, error, {"Retry-After": "0"})
        if model == "server-error":
            error["error"]["message"] = "the model fell over"
            return self._json(handler, 500, error)
        if model == "bad-request":
            error["error"]["message"] = "Incorrect API key provided: sk-test-secret-key-123"
            return self._json(handler, 400, error)
        if model == "slow":
            time.sleep(5)
        text = body["messages"][-1]["content"]
        chunks = [
            text[: len(text) // 3],
            text[len(text) // 3 : 2 * len(text) // 3],
            text[2 * len(text) // 3 :],
        ]
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()

        def event(payload: str) -> None:
            handler.wfile.write(f"data: {payload}\n\n".encode())
            handler.wfile.flush()

        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model}
        if model == "malformed":
            event("{not json")
            handler.close_connection = True
            return
        for part in chunks:
            event(
                json.dumps(
                    {
                        **base,
                        "choices": [
                            {"index": 0, "delta": {"content": part}, "finish_reason": None}
                        ],
                    }
                )
            )
        event(json.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        event(
            json.dumps(
                {
                    **base,
                    "choices": [],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
                }
            )
        )
        event("[DONE]")
        handler.close_connection = True

    # -- HTTP tool targets ---------------------------------------------------------------

    def _tool(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length", "0") or 0)
        body = handler.rfile.read(length).decode() if length else ""
        path = handler.path
        if path.startswith("/tool/echo"):
            data = json.dumps(
                {"method": method, "body": body, "x-test": handler.headers.get("X-Test", "")}
            ).encode()
            status = 200
        elif path.startswith("/tool/fail"):
            data, status = b"upstream says no" * 10, 503
        elif path.startswith("/tool/big"):
            data, status = b"x" * 5000, 200
        elif path.startswith("/tool/slow"):
            time.sleep(3)
            data, status = b"late", 200
        elif path.startswith("/tool/redirect"):
            target = path.split("to=", 1)[1]
            handler.send_response(302)
            handler.send_header("Location", target)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        else:
            data, status = b"not found", 404
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
