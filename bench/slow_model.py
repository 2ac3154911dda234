"""A tiny loopback OpenAI-compatible chat-completions server for the takeover measurement
(W7): model `slow` waits `delay` seconds before answering, any other model answers at once.
The answer is the last user message, streamed as SSE in two chunks, then usage, then [DONE]."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class SlowModel:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.requests = 0
        model = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                model.requests += 1
                if body.get("model") == "slow":
                    time.sleep(model.delay)
                text = str(body["messages"][-1]["content"])
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                base = {"id": "c1", "object": "chat.completion.chunk", "created": 1}
                base["model"] = body.get("model", "")
                chunks: list[dict[str, Any]] = [
                    {**base, "choices": [{"index": 0, "delta": {"content": part}}]}
                    for part in (text[: len(text) // 2], text[len(text) // 2 :])
                ]
                chunks.append(
                    {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                )
                chunks.append(
                    {
                        **base,
                        "choices": [],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
                    }
                )
                try:
                    for c in chunks:
                        self.wfile.write(f"data: {json.dumps(c)}\n\n".encode())
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except OSError:
                    pass  # the caller was killed: expected here
                self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
