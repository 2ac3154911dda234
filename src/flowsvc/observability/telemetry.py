"""The engine's telemetry port, implemented with Prometheus metrics and OpenTelemetry spans
(either may be off)."""

from __future__ import annotations

from typing import cast

from flowsvc.domain.runs import FlowRun, SessionStep
from flowsvc.domain.telemetry import NO_SPAN, Span
from flowsvc.observability.metrics import Metrics
from flowsvc.observability.spans import (
    CLIENT,
    INTERNAL,
    StepSpan,
    Tracer,
    current_span,
    model_called,
    parse_traceparent,
)


class Observed:
    def __init__(self, metrics: Metrics | None, tracer: Tracer | None) -> None:
        self._metrics = metrics
        self._tracer = tracer

    # -- spans ------------------------------------------------------------------------------

    def trace_context(self) -> str:
        if self._tracer is None:
            return ""
        span = current_span()
        return "" if span is None else span.traceparent()

    def run_span(self, run: FlowRun) -> Span:
        if self._tracer is None:
            return NO_SPAN
        links = None
        if current_span() is None and run.trace_context:
            # Resumed (after a restart, or by another replica): no caller's span around it;
            # it links to the trace the run began in.
            origin = parse_traceparent(run.trace_context)
            links = None if origin is None else [origin]
        span: Span = self._tracer.span(
            "run",
            INTERNAL,
            {
                "flowsvc.run_id": run.id,
                "flowsvc.session_id": run.session_id,
                "flowsvc.flow_id": run.flow_id,
                "flowsvc.version": run.version,
            },
            links,
        )
        return span

    def step_span(self, run: FlowRun, step: SessionStep) -> Span:
        if self._tracer is None:
            return NO_SPAN
        kind = step.step.step_type.value if step.step.step_type else ""
        span = cast(StepSpan, self._tracer.span(
            f"step {step.step.name}",
            INTERNAL,
            {
                "flowsvc.step.name": step.step.name,
                "flowsvc.step.type": kind,
                "flowsvc.step_id": step.id,
                "flowsvc.run_id": run.id,
            },
            cls=StepSpan,
        ))
        span.step = step
        return span

    def call_span(self, name: str, kind: str, target: str) -> Span:
        """Only for calls that leave the process: the in-process builtin model has none (its
        step's span carries the model and the tokens)."""
        if self._tracer is None:
            return NO_SPAN
        key = "gen_ai.request.model" if kind == "model" else "url.full"
        span: Span = self._tracer.span(name, CLIENT, {key: target, "flowsvc.call": kind})
        return span

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
        if self._tracer is not None:
            model_called(model, outcome, input_tokens, output_tokens)
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
