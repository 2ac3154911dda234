"""flowsvc's Python client: `from flowsvc.client import Client`.

Needs only grpcio, grpcio-status and protobuf (the base install of the `flowsvc`
distribution); the server's dependencies come with the `server` extra."""

from flowsvc.client.client import DEFAULT_SERVER, Client, tls_credentials
from flowsvc.client.errors import FieldViolation, FlowsvcError
from flowsvc.client.retry import NO_RETRY, RetryPolicy
from flowsvc.v1 import resources_pb2 as types

__all__ = [
    "DEFAULT_SERVER",
    "NO_RETRY",
    "Client",
    "FieldViolation",
    "FlowsvcError",
    "RetryPolicy",
    "tls_credentials",
    "types",
]
