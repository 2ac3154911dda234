"""OpenTelemetry tracing, configured from the standard OTEL_* environment variables.

Off (and costless) unless OTEL_TRACES_EXPORTER names an exporter: `otlp` (protocol from
OTEL_EXPORTER_OTLP_TRACES_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL: `http/protobuf`, the
default, or `grpc`; endpoint, headers and timeouts from the exporters' own OTEL_EXPORTER_OTLP_*
variables), or `console`. OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES name the service;
OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG choose the sampler; OTEL_BSP_* the batching.
The SDK is imported only when tracing is on, and used for its configuration: spans are recorded
and encoded by flowsvc.observability.spans and .otlp, at a fraction of the SDK's cost.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

SUPPORTED = ("otlp", "console", "none")


def tracer_from_env(env: Mapping[str, str] = os.environ) -> Any | None:
    """A flowsvc.observability.spans.Tracer, or None with tracing off."""
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

    from flowsvc.observability import otlp
    from flowsvc.observability.spans import Tracer

    attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "flowsvc"}
    # The SDK's provider is made for its configuration only: the sampler and the resource
    # it reads from the environment.
    provider = TracerProvider(resource=Resource.create(attributes))
    transports: list[Any] = []
    for name in names:
        if name == "console":
            transports.append(otlp.ConsoleTransport())
            continue
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        if protocol == "grpc":
            transports.append(otlp.GrpcTransport(env))
        else:  # http/protobuf (what an OTLP/HTTP collector takes for any http/* asked)
            transports.append(otlp.HttpTransport(env))
    request = otlp.request_encoder(dict(provider.resource.attributes), "flowsvc")
    return Tracer(provider.sampler, otlp.Exporter(env, transports, request))
