"""A loopback HTTP server receiving webhooks, with its own check of the Standard Webhooks
signature written from the specification (not from flowsvc's code):

  signed content  = "{webhook-id}.{webhook-timestamp}.{raw body}"
  key             = base64-decode(secret without its "whsec_" prefix)
  webhook-signature = space-separated "v1,<base64(HMAC-SHA256(key, signed content))>"

Each path answers as `plan` says: a list of statuses consumed in order (the last one repeats),
or "hang" to never answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


def verify(secret: str, r: Received, tolerance: float = 300) -> bool:
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret[len("whsec_") :])
    msg_id, stamp = r.headers["webhook-id"], r.headers["webhook-timestamp"]
    if abs(time.time() - int(stamp)) > tolerance:
        return False
    content = msg_id.encode() + b"." + stamp.encode() + b"." + r.body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    for candidate in r.headers["webhook-signature"].split(" "):
        version, _, sig = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(sig, expected):
            return True
    return False


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.plan: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    receiver.received.append(Received(self.path, headers, body, time.monotonic()))
                    steps = receiver.plan.get(self.path, [200])
                    answer = steps.pop(0) if len(steps) > 1 else steps[0]
                if answer == "hang":
                    receiver._release.wait(60)
                    return
                self.send_response(int(answer))
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://{self.host}{path}"

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
