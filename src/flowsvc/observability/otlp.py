"""Spans to OTLP: the protobuf wire encoding of finished spans, the batching thread that ships
them, and the transports (OTLP/HTTP protobuf, OTLP/gRPC, console).

Encoding is done here, straight to bytes: the SDK's encoder builds a protobuf object per span,
attribute and value from Python (≈ 60 µs a span on this machine, more than the rest of a span's
life); this writes the same messages (opentelemetry/proto/trace/v1/trace.proto) with a few
byte concatenations. The batching follows the SDK's BatchSpanProcessor and its OTEL_BSP_*
variables; the transports the exporters' OTEL_EXPORTER_OTLP_* variables.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import ssl
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger("flowsvc.tracing")

# A finished span: trace id (16 bytes), span id (8), parent span id (8 or b""), name, kind
# (1 internal, 2 server, 3 client), start and end (ns), attributes, error message (None: unset),
# events [(time ns, name, attributes)], links [(trace id, span id)], flags.
Record = tuple[
    bytes, bytes, bytes, str, int, int, int, dict[str, Any], str | None,
    list[tuple[int, str, dict[str, Any]]] | None, list[tuple[bytes, bytes]] | None, int,
]

_fixed64 = struct.Struct("<Q").pack
_double = struct.Struct("<d").pack
_KEYS: dict[str, bytes] = {}


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    n = len(payload)
    return tag + (bytes((n,)) if n < 0x80 else _varint(n)) + payload


def _value(v: Any) -> bytes:
    """An AnyValue."""
    if isinstance(v, bool):
        return b"\x10\x01" if v else b"\x10\x00"
    if isinstance(v, int):
        return b"\x18" + _varint(v & 0xFFFFFFFFFFFFFFFF)
    if isinstance(v, float):
        return b"\x21" + _double(v)
    return _field(b"\x0a", str(v).encode())


# Encoded KeyValues (by field tag) of attributes with short string values, which repeat
# (method names, step names and types, models, outcomes); ids are longer and not kept.
_PAIRS: dict[bytes, dict[tuple[str, Any], bytes]] = {}
_PAIRS_MAX = 4096


def _attributes(tag: bytes, attributes: Mapping[str, Any]) -> bytes:
    """Repeated KeyValue under `tag`."""
    parts = []
    pairs = _PAIRS.get(tag)
    if pairs is None:
        pairs = _PAIRS[tag] = {}
    for item in attributes.items():
        kv = pairs.get(item)
        if kv is None:
            key, v = item
            k = _KEYS.get(key)
            if k is None:
                k = _KEYS[key] = _field(b"\x0a", key.encode())
            if type(v) is str and len(v) < 64:  # the usual: one byte a length, two at most
                data = v.encode()
                n = len(data)
                body = k + bytes((0x12, n + 2, 0x0A, n)) + data if n < 126 else (
                    k + _field(b"\x12", _value(v))
                )
                kv = _field(tag, body)
            else:
                kv = _field(tag, k + _field(b"\x12", _value(v)))
            if isinstance(v, str) and len(v) <= 24 and len(pairs) < _PAIRS_MAX:
                pairs[item] = kv
        parts.append(kv)
    return b"".join(parts)


def encode_span(r: Record) -> bytes:
    trace_id, span_id, parent, name, kind, start, end, attributes, error, events, links, flags = r
    out = [
        b"\x0a\x10", trace_id, b"\x12\x08", span_id,
        b"\x22\x08" + parent if parent else b"",
        _field(b"\x2a", name.encode()),
        b"\x30", bytes((kind,)), b"\x39", _fixed64(start), b"\x41", _fixed64(end),
        _attributes(b"\x4a", attributes),
    ]
    for at, event_name, event_attributes in events or ():
        out.append(_field(b"\x5a", b"\x09" + _fixed64(at) + _field(b"\x12", event_name.encode())
                          + _attributes(b"\x1a", event_attributes)))
    for link_trace, link_span in links or ():
        out.append(_field(b"\x6a", b"\x0a\x10" + link_trace + b"\x12\x08" + link_span))
    if error is not None:
        out.append(_field(b"\x7a", _field(b"\x12", error.encode()) + b"\x18\x02"))
    out.append(b"\x85\x01" + struct.pack("<I", flags))
    return _field(b"\x12", b"".join(out))  # ScopeSpans.spans


def request_encoder(resource: Mapping[str, Any], scope: str) -> Callable[[Iterable[bytes]], bytes]:
    """ExportTraceServiceRequest bytes for encoded spans: one resource, one scope."""
    resource_field = _field(b"\x0a", _attributes(b"\x0a", resource))
    scope_field = _field(b"\x0a", _field(b"\x0a", scope.encode()))

    def request(spans: Iterable[bytes]) -> bytes:
        scope_spans = _field(b"\x12", scope_field + b"".join(spans))
        return _field(b"\x0a", resource_field + scope_spans)

    return request


# -- transports -------------------------------------------------------------------------------


def _env(env: Mapping[str, str], name: str, default: str = "") -> str:
    """OTEL_EXPORTER_OTLP_TRACES_<name>, else OTEL_EXPORTER_OTLP_<name>."""
    return env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(
        f"OTEL_EXPORTER_OTLP_{name}", default
    )


def _headers(env: Mapping[str, str]) -> dict[str, str]:
    pairs = (p.split("=", 1) for p in _env(env, "HEADERS").split(",") if "=" in p)
    return {unquote(k).strip().lower(): unquote(v).strip() for k, v in pairs}


class HttpTransport:
    """OTLP/HTTP protobuf: POST to OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as given, or to
    OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces (default http://localhost:4318/v1/traces), one
    kept-alive connection, used by the exporting thread only."""

    def __init__(self, env: Mapping[str, str]) -> None:
        url = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318").rstrip("/")
            + "/v1/traces"
        )
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path or "/"
        self._timeout = float(_env(env, "TIMEOUT", "10"))
        self._gzip = _env(env, "COMPRESSION").lower() == "gzip"
        self._certificate = _env(env, "CERTIFICATE") or None
        self._headers = {**_headers(env), "content-type": "application/x-protobuf"}
        if self._gzip:
            self._headers["content-encoding"] = "gzip"
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            context = ssl.create_default_context(cafile=self._certificate)
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=context
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def send(self, data: bytes) -> None:
        body = gzip.compress(data) if self._gzip else data
        for attempt in (1, 2):  # a kept-alive connection the collector closed: once more
            try:
                if self._connection is None:
                    self._connection = self._connect()
                self._connection.request("POST", self._path, body, self._headers)
                response = self._connection.getresponse()
                response.read()
                if response.status >= 300:
                    raise OSError(f"collector answered HTTP {response.status}")
                return
            except (OSError, http.client.HTTPException):
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None
                if attempt == 2:
                    raise

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


class GrpcTransport:
    """OTLP/gRPC: TraceService/Export on OTEL_EXPORTER_OTLP(_TRACES)_ENDPOINT (default
    http://localhost:4317; https, or OTEL_EXPORTER_OTLP_INSECURE=false, for TLS)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        import grpc

        url = _env(env, "ENDPOINT", "http://localhost:4317")
        parts = urlsplit(url if "://" in url else f"http://{url}")
        target = f"{parts.hostname or 'localhost'}:{parts.port or 4317}"
        insecure = _env(env, "INSECURE").lower()
        secure = parts.scheme == "https" or insecure == "false"
        if secure:
            certificate = _env(env, "CERTIFICATE")
            root = open(certificate, "rb").read() if certificate else None  # noqa: SIM115
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root))
        else:
            self._channel = grpc.insecure_channel(target)
        self._export = self._channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        )
        self._metadata = tuple(_headers(env).items())
        self._timeout = float(_env(env, "TIMEOUT", "10"))
        gz = _env(env, "COMPRESSION").lower() == "gzip"
        self._compression = grpc.Compression.Gzip if gz else None

    def send(self, data: bytes) -> None:
        self._export(
            data, timeout=self._timeout, metadata=self._metadata, compression=self._compression
        )

    def close(self) -> None:
        self._channel.close()


class ConsoleTransport:
    """Each batch as JSON on standard output (for a look, not for production)."""

    def send(self, data: bytes) -> None:
        from google.protobuf.json_format import MessageToJson
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        print(MessageToJson(ExportTraceServiceRequest.FromString(data)), file=sys.stdout)

    def close(self) -> None:
        return None


# -- batching ---------------------------------------------------------------------------------


class Exporter:
    """The SDK's BatchSpanProcessor, for records: a queue of at most OTEL_BSP_MAX_QUEUE_SIZE
    spans (2048; spans beyond are dropped and counted), shipped by one thread every
    OTEL_BSP_SCHEDULE_DELAY ms (5000) or as soon as OTEL_BSP_MAX_EXPORT_BATCH_SIZE (512) wait,
    in requests of at most that many spans, to every transport."""

    def __init__(
        self,
        env: Mapping[str, str],
        transports: list[Any],
        request: Callable[[Iterable[bytes]], bytes],
    ) -> None:
        self._delay = int(env.get("OTEL_BSP_SCHEDULE_DELAY", "5000")) / 1000
        self._max_queue = int(env.get("OTEL_BSP_MAX_QUEUE_SIZE", "2048"))
        self._batch = int(env.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"))
        self._transports = transports
        self._request = request
        self._queue: deque[Record] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()  # one export at a time (the thread's, or shutdown's)
        self.dropped = 0
        self.exported = 0
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name="otlp-export", daemon=True)
        self._thread.start()

    def add(self, record: Record) -> None:
        queue = self._queue
        if len(queue) >= self._max_queue:
            self.dropped += 1
            return
        queue.append(record)
        if len(queue) == self._batch:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._delay)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        with self._lock:
            queue = self._queue
            while queue:
                records = [queue.popleft() for _ in range(min(len(queue), self._batch))]
                data = self._request(map(encode_span, records))
                for transport in self._transports:
                    try:
                        transport.send(data)
                        self.exported += len(records)
                    except Exception as exc:  # the collector is down: spans are lost, not us
                        self._failures += 1
                        if self._failures in (1, 10, 100) or self._failures % 1000 == 0:
                            log.warning(
                                "span export failed",
                                extra={"error": str(exc), "failures": self._failures},
                            )

    def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=5)
        self.flush()
        for transport in self._transports:
            transport.close()
