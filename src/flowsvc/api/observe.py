"""What the call guard records of each call: gRPC server metrics (go-grpc-prometheus names),
a server span continuing the caller's W3C traceparent, and the fields every log line of the
call carries (organisation, session, run, request_id, trace and span ids).

What a method's calls share (its labels, its metric series, its span's name and attributes)
is worked out at its first call and kept: a call only adds to counters it already holds."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import grpc

from flowsvc import logs
from flowsvc.observability.metrics import CounterSeries, HistogramSeries, Metrics
from flowsvc.observability.spans import CURRENT, LeanSpan, Tracer

# Which resource a bare `id` names, by service.
_ID_FIELD = {
    "SessionService": "session_id",
    "FlowRunService": "run_id",
    "LiveFlowService": "flow_id",
    "EvalService": "eval_job_id",
}
# Which id a resource's own `id` is, whatever service answers with it.
_RESOURCE_ID = {"FlowRun": "run_id", "Session": "session_id", "LiveFlow": "flow_id"}
_NAMED = ("session_id", "run_id", "request_id", "flow_id", "live_flow_id")


def _ids_in(message: Any, service: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    descriptor = getattr(message, "DESCRIPTOR", None)
    if descriptor is None:
        return fields
    plan = _PLANS.get(descriptor)
    if plan is None:
        plan = _PLANS[descriptor] = _plan(descriptor)
    named, has_id = plan
    for name, key in named:
        value = getattr(message, name)
        if value:
            fields[key] = value
    if has_id and message.id:
        resource = _RESOURCE_ID.get(descriptor.name)
        fields.setdefault(resource or _ID_FIELD.get(service, "id"), message.id)
    return fields


# Which of _NAMED (and `id`) a message type has, and the log field each goes to: worked out
# once per type rather than looked up in its descriptor at every call.
_PLANS: dict[Any, tuple[tuple[tuple[str, str], ...], bool]] = {}


def _plan(descriptor: Any) -> tuple[tuple[tuple[str, str], ...], bool]:
    names = descriptor.fields_by_name
    named = tuple(
        (name, "flow_id" if name == "live_flow_id" else name) for name in _NAMED if name in names
    )
    return named, "id" in names


class _Method:
    """One (method, kind): its names and, with metrics on, its series."""

    __slots__ = (
        "_handled", "_labels", "_metrics", "handling", "kind", "name", "received", "sent",
        "service", "short_service", "span_name", "started",
    )

    def __init__(self, metrics: Metrics | None, method: str, kind: str) -> None:
        self.span_name = method.lstrip("/")
        service, _, name = self.span_name.partition("/")
        self.service, self.name, self.kind = service, name, kind
        self.short_service = service.rpartition(".")[2]
        self._labels = labels = (kind, service, name)
        self._metrics = metrics
        self._handled: dict[grpc.StatusCode, CounterSeries] = {}
        if metrics is None:  # counted nowhere
            self.started, self.received, self.sent = (CounterSeries() for _ in range(3))
            self.handling = HistogramSeries(())
        else:
            self.started = metrics.started.labels(*labels)
            self.received = metrics.received.labels(*labels)
            self.sent = metrics.sent.labels(*labels)
            self.handling = metrics.handling.labels(*labels)

    def handled(self, code: grpc.StatusCode) -> CounterSeries:
        series = self._handled.get(code)
        if series is None:
            series = self._handled[code] = (
                CounterSeries()
                if self._metrics is None
                else self._metrics.handled.labels(*self._labels, code.name)
            )
        return series


class Call:
    __slots__ = ("_method", "_span", "_token", "fields", "started")

    def __init__(self, observer: CallObserver, method: str, kind: str, metadata: Any) -> None:
        self.started = time.perf_counter()
        m = observer.method(method, kind)
        self._method = m
        m.started.value += 1
        m.received.value += 1
        self.fields: dict[str, Any] = {"method": method}
        self._span: LeanSpan | None = None
        if observer.tracer is not None:
            span = observer.tracer.server_span(
                m.span_name,
                {"rpc.system": "grpc", "rpc.service": m.service, "rpc.method": m.name},
                metadata,
            )
            self._span = span
            self._token = CURRENT.set(span)
            self.fields["trace_id"] = span.trace_id.hex()
            self.fields["span_id"] = span.span_id.hex()
        logs.CALL_FIELDS.set(self.fields)

    def saw(self, message: Any) -> None:
        """The request or response: the ids it names go on the call's log lines."""
        if message is not None:
            self.fields.update(_ids_in(message, self._method.short_service))

    def finish(self, code: grpc.StatusCode) -> float:
        seconds = time.perf_counter() - self.started
        m = self._method
        m.handled(code).value += 1
        m.handling.observe(seconds)
        if code is grpc.StatusCode.OK and m.kind == "unary":
            m.sent.value += 1
        span = self._span
        if span is not None:
            span.attributes["rpc.grpc.status_code"] = code.value[0]
            if code is not grpc.StatusCode.OK:
                span.error = code.name
            # A stream's generator may finish in another context: nothing was set there.
            with contextlib.suppress(ValueError):
                CURRENT.reset(self._token)
            span.end()
        return seconds


class CallObserver:
    def __init__(self, metrics: Metrics | None = None, tracer: Tracer | None = None) -> None:
        self.metrics = metrics
        self.tracer = tracer
        self._methods: dict[tuple[str, str], _Method] = {}

    def method(self, method: str, kind: str) -> _Method:
        m = self._methods.get((method, kind))
        if m is None:
            m = self._methods[(method, kind)] = _Method(self.metrics, method, kind)
        return m

    def start(self, method: str, kind: str, metadata: Any) -> Call:
        return Call(self, method, kind, metadata)

    def message_sent(self, method: str, kind: str, count: int = 1) -> None:
        """`count` messages sent on a stream (event streams count theirs in bulk)."""
        self.method(method, kind).sent.value += count
