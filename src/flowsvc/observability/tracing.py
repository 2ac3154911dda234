"""OpenTelemetry tracing, configured from the standard OTEL_* environment variables.

Off (and costless) unless OTEL_TRACES_EXPORTER names an exporter: `otlp` (protocol from
OTEL_EXPORTER_OTLP_TRACES_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL: `http/protobuf`, the
default, or `grpc`; endpoint, headers and timeouts from the exporters' own OTEL_EXPORTER_OTLP_*
variables), or `console`. OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES name the service;
OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG choose the sampler. The SDK is imported only
when tracing is on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

SUPPORTED = ("otlp", "console", "none")


def tracer_provider_from_env(env: Mapping[str, str] = os.environ) -> Any | None:
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    if not names:
        return None
    unknown = [n for n in names if n not in SUPPORTED]
    if unknown:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} not supported (otlp, console, none)"
        )
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "flowsvc"}
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        exporter: Any
        if name == "console":
            exporter = ConsoleSpanExporter()
        else:
            protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
            )
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter as GrpcExporter,
                )

                exporter = GrpcExporter()
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter as HttpExporter,
                )

                exporter = HttpExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
