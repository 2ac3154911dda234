"""The engine's telemetry port, implemented with Prometheus metrics and OpenTelemetry spans
(either may be off)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from flowsvc.domain.runs import FlowRun, SessionStep
from flowsvc.domain.telemetry import NO_SPAN, Span
from flowsvc.observability.metrics import Metrics


class _OtelSpan:
    """A span that is the current one while its block runs (calls out inherit it)."""

    __slots__ = ("_attributes", "_kind", "_links", "_name", "_span", "_token", "_tracer")

    def __init__(
        self, tracer: Any, name: str, kind: Any, attributes: dict[str, Any], links: Any = None
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._kind = kind
        self._attributes = attributes
        self._links = links
        self._span: Any = None
        self._token: Any = None

    def set(self, key: str, value: str | int | float | bool) -> None:
        if self._span is not None:
            self._span.set_attribute(key, value)

    def fail(self, message: str) -> None:
        if self._span is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, message))

    def __enter__(self) -> _OtelSpan:
        from opentelemetry import context, trace

        self._span = self._tracer.start_span(
            self._name, kind=self._kind, attributes=self._attributes, links=self._links
        )
        self._token = context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        from opentelemetry import context

        if exc is not None and not isinstance(exc, GeneratorExit):
            self._span.record_exception(exc)
            self.fail(type(exc).__name__)
        context.detach(self._token)
        self._span.end()


class Observed:
    def __init__(self, metrics: Metrics | None, tracer_provider: Any | None) -> None:
        self._metrics = metrics
        self._tracer = None if tracer_provider is None else tracer_provider.get_tracer("flowsvc")

    # -- spans ------------------------------------------------------------------------------

    def trace_context(self) -> str:
        if self._tracer is None:
            return ""
        from opentelemetry.propagate import inject

        carrier: dict[str, str] = {}
        inject(carrier)
        return carrier.get("traceparent", "")

    def run_span(self, run: FlowRun) -> Span:
        if self._tracer is None:
            return NO_SPAN
        from opentelemetry import trace
        from opentelemetry.propagate import extract

        links = None
        if not trace.get_current_span().get_span_context().is_valid and run.trace_context:
            # Resumed (after a restart, or by another replica): no caller's span around it;
            # it links to the trace the run began in.
            origin = trace.get_current_span(extract({"traceparent": run.trace_context}))
            links = [trace.Link(origin.get_span_context())]
        return _OtelSpan(
            self._tracer,
            "run",
            trace.SpanKind.INTERNAL,
            {
                "flowsvc.run_id": run.id,
                "flowsvc.session_id": run.session_id,
                "flowsvc.flow_id": run.flow_id,
                "flowsvc.version": run.version,
            },
            links,
        )

    def step_span(self, run: FlowRun, step: SessionStep) -> Span:
        if self._tracer is None:
            return NO_SPAN
        from opentelemetry import trace

        kind = step.step.step_type.value if step.step.step_type else ""
        return _OtelSpan(
            self._tracer,
            f"step {step.step.name}",
            trace.SpanKind.INTERNAL,
            {
                "flowsvc.step.name": step.step.name,
                "flowsvc.step.type": kind,
                "flowsvc.step_id": step.id,
                "flowsvc.run_id": run.id,
            },
        )

    def call_span(self, name: str, kind: str, target: str) -> Span:
        if self._tracer is None:
            return NO_SPAN
        from opentelemetry import trace

        key = "gen_ai.request.model" if kind == "model" else "url.full"
        return _OtelSpan(
            self._tracer, name, trace.SpanKind.CLIENT, {key: target, "flowsvc.call": kind}
        )

    # -- metrics ----------------------------------------------------------------------------

    def run_finished(self, run: FlowRun, seconds: float) -> None:
        m = self._metrics
        if m is not None:
            status = run.status.value
            m.runs.labels(m.flow_label(run.flow_id), status).inc()
            m.run_seconds.labels(status).observe(seconds)

    def step_finished(self, step: SessionStep, seconds: float) -> None:
        if self._metrics is not None:
            kind = step.step.step_type.value if step.step.step_type else ""
            self._metrics.step_seconds.labels(kind, step.status.value).observe(seconds)

    def model_called(
        self, model: str, outcome: str, input_tokens: int, output_tokens: int, cost: float
    ) -> None:
        m = self._metrics
        if m is None:
            return
        m.model_calls.labels(model, outcome).inc()
        if input_tokens:
            m.tokens.labels(model, "input").inc(input_tokens)
        if output_tokens:
            m.tokens.labels(model, "output").inc(output_tokens)
        if cost:
            m.cost.labels(model).inc(cost)

    def sessions_taken_over(self, count: int) -> None:
        if self._metrics is not None and count:
            self._metrics.takeovers.inc(count)

    def write_fenced(self) -> None:
        if self._metrics is not None:
            self._metrics.fenced.inc()

    def subscriber_cut_off(self) -> None:
        return None  # counted by the hub, read at scrape time

    def eval_job_finished(self, status: str) -> None:
        if self._metrics is not None:
            self._metrics.eval_jobs.labels(status).inc()
