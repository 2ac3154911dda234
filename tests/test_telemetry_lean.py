"""The lean telemetry pieces against their references: spans encoded by hand parse as the
OTLP protobuf messages they claim to be (with the OpenTelemetry protos' own parser), reach real
OTLP/gRPC and OTLP/HTTP endpoints on loopback with the configured headers and compression, a
resumed run's span links to its first trace, and lean histograms render the buckets
prometheus-client's own Histogram renders."""

from __future__ import annotations

import gzip
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from flowsvc.observability.metrics import LeanCounter, LeanHistogram
from flowsvc.observability.otlp import encode_span, request_encoder
from flowsvc.observability.telemetry import Observed
from flowsvc.observability.tracing import tracer_from_env


def test_a_span_encoded_by_hand_parses_as_otlp_with_every_field() -> None:
    trace_id, span_id, parent = bytes(range(1, 17)), bytes(range(20, 28)), bytes(range(30, 38))
    linked = (bytes(range(40, 56)), bytes(range(60, 68)))
    attributes = {
        "s": "é" * 100, "m": "é" * 61, "m2": "é" * 63, "u": "a" * 40,  # lengths' two paths
        "i": -3, "big": 2**40, "f": 0.25, "t": True, "n": False, "one": 1,
        "service.name": "flowsvc-test",  # as the resource's: kept encodings are per field
    }
    record = (
        trace_id, span_id, parent, "step draft", 3, 1_700_000_000_123_456_789,
        1_700_000_000_223_456_789, attributes, "boom",
        [(1_700_000_000_200_000_000, "exception", {"exception.type": "ValueError"})],
        [linked], 0x300,
    )
    request = request_encoder({"service.name": "flowsvc-test"}, "flowsvc")
    parsed = ExportTraceServiceRequest.FromString(request([encode_span(record)] * 2))
    (resource,) = parsed.resource_spans
    assert [(a.key, a.value.string_value) for a in resource.resource.attributes] == [
        ("service.name", "flowsvc-test")
    ]
    (scope,) = resource.scope_spans
    assert scope.scope.name == "flowsvc"
    assert len(scope.spans) == 2
    span = scope.spans[0]
    assert (span.trace_id, span.span_id, span.parent_span_id) == (trace_id, span_id, parent)
    assert (span.name, span.kind) == ("step draft", span.SPAN_KIND_CLIENT)
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == record[5:7]
    got = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}
    assert got == attributes
    assert isinstance(got["one"], int) and not isinstance(got["one"], bool)
    again = {"t": 1, "one": True, "i": "-3"}  # same keys, values equal in Python, other types
    again_span = ExportTraceServiceRequest.FromString(
        request([encode_span((*record[:7], again, *record[8:]))])
    ).resource_spans[0].scope_spans[0].spans[0]
    assert {a.key: a.value.WhichOneof("value") for a in again_span.attributes} == {
        "t": "int_value", "one": "bool_value", "i": "string_value"
    }
    assert (span.status.code, span.status.message) == (span.status.STATUS_CODE_ERROR, "boom")
    (event,) = span.events
    assert (event.name, event.time_unix_nano) == ("exception", 1_700_000_000_200_000_000)
    assert event.attributes[0].value.string_value == "ValueError"
    (link,) = span.links
    assert (link.trace_id, link.span_id) == linked
    assert span.flags == 0x300


def test_a_span_without_parent_status_events_or_links_leaves_them_unset() -> None:
    record = (b"\x01" * 16, b"\x02" * 8, b"", "run", 1, 1, 2, {}, None, None, None, 0x100)
    span = ExportTraceServiceRequest.FromString(
        request_encoder({}, "flowsvc")([encode_span(record)])
    ).resource_spans[0].scope_spans[0].spans[0]
    assert span.parent_span_id == b"" and not span.HasField("status")
    assert (len(span.events), len(span.links), span.kind) == (0, 0, span.SPAN_KIND_INTERNAL)


def test_lean_histogram_and_counter_render_as_prometheus_clients_own() -> None:
    values = [0.0005, 0.001, 0.003, 0.2, 7.0, 400.0, 0.001]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    lean = LeanHistogram("x_seconds", "X.", ("method",))
    ours.register(lean)
    reference = Histogram("x_seconds", "X.", ("method",), registry=theirs, buckets=(
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300
    ))
    for v in values:
        lean.labels("Get").observe(v)
        reference.labels("Get").observe(v)

    def samples(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return [line for line in text.splitlines() if not line.startswith("#")
                and "_created" not in line]

    assert samples(ours) == samples(theirs)
    counter = LeanCounter("calls", "Calls.", ("code",))
    registry = CollectorRegistry()
    registry.register(counter)
    counter.labels("OK").inc()
    counter.labels("OK").inc(2)
    assert 'calls_total{code="OK"} 3.0' in generate_latest(registry).decode()


def _one_trace(env: dict[str, str]) -> None:
    """A call's span with a run span below it, exported at shutdown."""
    tracer = tracer_from_env({"OTEL_TRACES_EXPORTER": "otlp", **env})
    assert tracer is not None
    with tracer.server_span("svc/Call", {"rpc.system": "grpc"}, {}), tracer.span("run", 1, {}):
        pass
    tracer.shutdown()


def test_spans_reach_an_otlp_grpc_endpoint_with_the_configured_headers() -> None:
    received: list[tuple[bytes, dict[str, str]]] = []

    def export(request: bytes, context: grpc.ServicerContext) -> bytes:
        received.append((request, dict(context.invocation_metadata())))
        return ExportTraceServiceResponse().SerializeToString()

    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)},
    ),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        _one_trace({
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=acme%20corp",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        })
    finally:
        server.stop(None)
    ((body, metadata),) = received
    spans = ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans
    assert [s.name for s in spans] == ["run", "svc/Call"]
    assert spans[0].parent_span_id == spans[1].span_id
    assert metadata["x-tenant"] == "acme corp"


def test_spans_reach_an_otlp_http_endpoint_gzipped_with_the_configured_headers() -> None:
    received: list[tuple[str, dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        _one_trace({
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{http.server_port}/in",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "authorization=Bearer t",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip",
        })
    finally:
        http.shutdown()
    ((path, headers, body),) = received
    assert path == "/in"
    assert (headers["authorization"], headers["content-encoding"]) == ("Bearer t", "gzip")
    assert headers["content-type"] == "application/x-protobuf"
    request = ExportTraceServiceRequest.FromString(gzip.decompress(body))
    assert len(request.resource_spans[0].scope_spans[0].spans) == 2


def test_a_resumed_run_links_to_the_trace_it_began_in() -> None:
    tracer = tracer_from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert tracer is not None
    origin_trace, origin_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    run = SimpleNamespace(
        id="r", session_id="s", flow_id="f", version=1,
        trace_context=f"00-{origin_trace}-{origin_span}-01",
    )
    span: Any = Observed(None, tracer).run_span(run)  # type: ignore[arg-type]
    assert span.links == [(bytes.fromhex(origin_trace), bytes.fromhex(origin_span))]
    assert span.trace_id.hex() != origin_trace  # a trace of its own, linked
    with tracer.server_span("svc/Call", {}, {}):  # started by a call: its child, no link
        assert Observed(None, tracer).run_span(run).links is None  # type: ignore[arg-type, attr-defined]


def test_the_configured_sampler_decides_at_a_local_root_and_children_follow_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    on = tracer_from_env({"OTEL_TRACES_EXPORTER": "console"})
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")  # the SDK reads it from os.environ
    off = tracer_from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert off is not None and on is not None
    with off.server_span("svc/Call", {}, {}) as root:
        assert not root.sampled and not off.span("run", 1, {}).sampled
        assert root.traceparent().endswith("-00")  # still propagated, as not sampled
    with on.server_span("svc/Call", {}, {}) as root:
        assert root.sampled and on.span("run", 1, {}).sampled
    caller_not_sampled = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}
    assert not on.server_span("svc/Call", {}, caller_not_sampled).sampled
