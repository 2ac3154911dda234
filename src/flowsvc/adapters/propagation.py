"""W3C trace context on calls out (model endpoints, HTTP steps): the callee's spans join the
run's trace. Without an active span there is nothing to send."""

from __future__ import annotations

from opentelemetry.propagate import inject


def trace_headers() -> dict[str, str]:
    headers: dict[str, str] = {}
    inject(headers)
    return headers
