"""What the call guard records of each call: gRPC server metrics (go-grpc-prometheus names),
a server span continuing the caller's W3C traceparent, and the fields every log line of the
call carries (organisation, session, run, request_id, trace and span ids)."""

from __future__ import annotations

import time
from typing import Any

import grpc

from flowsvc import logs
from flowsvc.observability.metrics import Metrics

# Which resource a bare `id` names, by service.
_ID_FIELD = {
    "SessionService": "session_id",
    "FlowRunService": "run_id",
    "LiveFlowService": "flow_id",
    "EvalService": "eval_job_id",
}
_NAMED = ("session_id", "run_id", "request_id", "flow_id", "live_flow_id")


def _ids_in(message: Any, service: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    descriptor = getattr(message, "DESCRIPTOR", None)
    if descriptor is None:
        return fields
    names = descriptor.fields_by_name
    for name in _NAMED:
        if name in names:
            value = getattr(message, name)
            if value:
                fields["flow_id" if name == "live_flow_id" else name] = value
    if "id" in names and message.id:
        kind = descriptor.name
        key = {"FlowRun": "run_id", "Session": "session_id", "LiveFlow": "flow_id"}.get(kind)
        fields.setdefault(key or _ID_FIELD.get(service, "id"), message.id)
    return fields


class Call:
    __slots__ = ("_labels", "_metrics", "_span", "_token", "fields", "started")

    def __init__(self, observer: CallObserver, method: str, kind: str, metadata: Any) -> None:
        self.started = time.perf_counter()
        service, _, name = method.lstrip("/").partition("/")
        self._metrics = observer.metrics
        self._labels = (kind, service, name)
        if self._metrics is not None:
            self._metrics.started.labels(*self._labels).inc()
            self._metrics.received.labels(*self._labels).inc()
        self._span: Any = None
        self._token: Any = None
        self.fields: dict[str, Any] = {"method": method}
        if observer.tracer is not None:
            from opentelemetry import context, trace
            from opentelemetry.propagate import extract

            parent = extract(metadata)
            self._span = observer.tracer.start_span(
                method.lstrip("/"),
                context=parent,
                kind=trace.SpanKind.SERVER,
                attributes={
                    "rpc.system": "grpc",
                    "rpc.service": service,
                    "rpc.method": name,
                },
            )
            self._token = context.attach(trace.set_span_in_context(self._span, parent))
            span_context = self._span.get_span_context()
            self.fields["trace_id"] = format(span_context.trace_id, "032x")
            self.fields["span_id"] = format(span_context.span_id, "016x")
        logs.CALL_FIELDS.set(self.fields)

    def saw(self, message: Any) -> None:
        """The request or response: the ids it names go on the call's log lines."""
        if message is not None:
            self.fields.update(_ids_in(message, self._labels[1].rpartition(".")[2]))

    def finish(self, code: grpc.StatusCode) -> float:
        seconds = time.perf_counter() - self.started
        if self._metrics is not None:
            self._metrics.handled.labels(*self._labels, code.name).inc()
            self._metrics.handling.labels(*self._labels).observe(seconds)
            if code is grpc.StatusCode.OK and self._labels[0] == "unary":
                self._metrics.sent.labels(*self._labels).inc()
        if self._span is not None:
            from opentelemetry import context
            from opentelemetry.trace import Status, StatusCode

            self._span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                self._span.set_status(Status(StatusCode.ERROR, code.name))
            self._span.end()
            context.detach(self._token)
        return seconds


class CallObserver:
    def __init__(self, metrics: Metrics | None = None, tracer_provider: Any | None = None) -> None:
        self.metrics = metrics
        self.tracer = None if tracer_provider is None else tracer_provider.get_tracer("flowsvc")

    def start(self, method: str, kind: str, metadata: Any) -> Call:
        return Call(self, method, kind, metadata)

    def message_sent(self, method: str, kind: str, count: int = 1) -> None:
        """`count` messages sent on a stream (event streams count theirs in bulk)."""
        if self.metrics is not None and count:
            service, _, name = method.lstrip("/").partition("/")
            self.metrics.sent.labels(kind, service, name).inc(count)
