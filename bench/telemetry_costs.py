"""CPU per unit of telemetry, measured in one process, back to back (best of 5, CPU time):
the per-call log line through `logging` (record, JsonFormatter, StreamHandler: the path the
call line took before) and through `flowsvc.logs.call_line`; a chain5 run's 7 spans as SDK
spans with the SDK's OTLP encoder, and as flowsvc's lean spans with its encoder.

    .venv/bin/python bench/telemetry_costs.py
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

RUN_ID = "01a22894-57a6-7d3d-8231-941a40b1247e"
FIELDS = {
    "method": "/flowsvc.v1.FlowRunService/RunFlow",
    "organisation_id": "bench",
    "run_id": RUN_ID,
    "session_id": RUN_ID,
    "flow_id": RUN_ID,
}
SERVER = {"rpc.system": "grpc", "rpc.service": "flowsvc.v1.FlowRunService", "rpc.method": "RunFlow"}
RUN = {"flowsvc.run_id": RUN_ID, "flowsvc.session_id": RUN_ID, "flowsvc.flow_id": RUN_ID,
       "flowsvc.version": 1}
STEP = {"flowsvc.step.name": "draft", "flowsvc.step.type": "LLM", "flowsvc.step_id": RUN_ID,
        "flowsvc.run_id": RUN_ID}


def best(f: Callable[[], Any], n: int) -> float:
    """µs of CPU per call of f, best of 5 rounds of n."""
    times = []
    for _ in range(5):
        t = time.process_time()
        for _ in range(n):
            f()
        times.append((time.process_time() - t) / n)
    return min(times) * 1e6


def log_lines() -> None:
    from flowsvc import logs

    sink = open(os.devnull, "w")  # noqa: SIM115
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logs.JsonFormatter())
    rpc = logging.getLogger("flowsvc.rpc")
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel("INFO")
    logs.CALL_FIELDS.set(FIELDS)
    before = best(lambda: rpc.info("rpc", extra={"code": "OK", "duration_ms": 12.3}), 20000)
    logs.SINK._stream = sink
    after = best(lambda: logs.call_line(FIELDS, "OK", 0.0123), 20000)
    print(f"per-call log line: logging {before:.1f} µs, call_line {after:.1f} µs")


def sdk_spans() -> None:
    from opentelemetry import context, trace
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter

    ended: list[ReadableSpan] = []

    class Keep(SpanExporter):
        def export(self, spans: Any) -> Any:
            ended.extend(spans)

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Keep()))
    tracer = provider.get_tracer("flowsvc")

    def run() -> None:
        with tracer.start_as_current_span("RunFlow", kind=trace.SpanKind.SERVER,
                                          attributes=SERVER):
            span = tracer.start_span("run", attributes=RUN)
            token = context.attach(trace.set_span_in_context(span))
            for _ in range(5):
                step = tracer.start_span("step draft", attributes=STEP)
                inner = context.attach(trace.set_span_in_context(step))
                context.detach(inner)
                step.end()
            context.detach(token)
            span.end()

    live = best(run, 1000)
    spans = ended[:3500]
    t = time.process_time()
    for i in range(0, len(spans), 512):
        encode_spans(spans[i : i + 512]).SerializePartialToString()
    encode = (time.process_time() - t) / len(spans) * 7 * 1e6
    print(f"SDK: 7 spans {live:.0f} µs on the loop, {encode:.0f} µs to encode")


def lean_spans() -> None:
    from flowsvc.observability import otlp
    from flowsvc.observability.spans import INTERNAL, Tracer

    env = {"OTEL_BSP_SCHEDULE_DELAY": "100000000", "OTEL_BSP_MAX_QUEUE_SIZE": "100000000",
           "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "100000000"}
    from opentelemetry.sdk.trace import TracerProvider

    request = otlp.request_encoder({"service.name": "flowsvc"}, "flowsvc")
    tracer = Tracer(TracerProvider().sampler, otlp.Exporter(env, [], request))

    def run() -> None:
        with tracer.server_span("RunFlow", dict(SERVER), {}), tracer.span("run", INTERNAL,
                                                                          dict(RUN)):
            for _ in range(5):
                with tracer.span("step draft", INTERNAL, dict(STEP)):
                    pass

    live = best(run, 1000)
    records = list(tracer.exporter._queue)[:3500]
    t = time.process_time()
    for i in range(0, len(records), 512):
        request(map(otlp.encode_span, records[i : i + 512]))
    encode = (time.process_time() - t) / len(records) * 7 * 1e6
    print(f"lean: 7 spans {live:.0f} µs on the loop, {encode:.0f} µs to encode")


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    log_lines()
    sdk_spans()
    lean_spans()
