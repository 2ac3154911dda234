"""What the engine reports about its work: spans around runs, steps and calls out, and the
counts behind the service's metrics. A port: the domain names what happened; an adapter
(flowsvc.observability) turns it into Prometheus metrics and OpenTelemetry spans. With
neither configured, the no-op here costs next to nothing on the hot path."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol

from flowsvc.domain.runs import FlowRun, SessionStep


class Span(Protocol):
    def set(self, key: str, value: str | int | float | bool) -> None: ...

    def fail(self, message: str) -> None: ...

    def __enter__(self) -> Span: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Telemetry(Protocol):
    def trace_context(self) -> str:
        """The current trace as a W3C traceparent ("" without one): stored with a run, so a
        run resumed after a restart or by another replica links back to it."""
        ...

    def run_span(self, run: FlowRun) -> Span: ...

    def step_span(self, run: FlowRun, step: SessionStep) -> Span: ...

    def call_span(self, name: str, kind: str, target: str) -> Span:
        """A call out of the process (a model, an HTTP step), as a client span."""
        ...

    def run_finished(self, run: FlowRun, seconds: float) -> None: ...

    def step_finished(self, step: SessionStep, seconds: float) -> None: ...

    def model_called(
        self, model: str, outcome: str, input_tokens: int, output_tokens: int, cost: float
    ) -> None: ...

    def sessions_taken_over(self, count: int) -> None: ...

    def write_fenced(self) -> None: ...

    def subscriber_cut_off(self) -> None: ...

    def eval_job_finished(self, status: str) -> None: ...


class _NoSpan:
    __slots__ = ()

    def set(self, key: str, value: str | int | float | bool) -> None:
        return None

    def fail(self, message: str) -> None:
        return None

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


NO_SPAN = _NoSpan()


class NoTelemetry:
    """Telemetry off."""

    def trace_context(self) -> str:
        return ""

    def run_span(self, run: FlowRun) -> Span:
        return NO_SPAN

    def step_span(self, run: FlowRun, step: SessionStep) -> Span:
        return NO_SPAN

    def call_span(self, name: str, kind: str, target: str) -> Span:
        return NO_SPAN

    def run_finished(self, run: FlowRun, seconds: float) -> None:
        return None

    def step_finished(self, step: SessionStep, seconds: float) -> None:
        return None

    def model_called(
        self, model: str, outcome: str, input_tokens: int, output_tokens: int, cost: float
    ) -> None:
        return None

    def sessions_taken_over(self, count: int) -> None:
        return None

    def write_fenced(self) -> None:
        return None

    def subscriber_cut_off(self) -> None:
        return None

    def eval_job_finished(self, status: str) -> None:
        return None
