"""Operators' view of a replica: Prometheus metrics, OpenTelemetry traces, log context."""
