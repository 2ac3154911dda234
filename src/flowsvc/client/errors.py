"""Errors of flowsvc calls: the status code, the message and the google.rpc details, readable."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import message as pb_message
from google.rpc import error_details_pb2, status_pb2

_DETAIL_TYPES: tuple[type[pb_message.Message], ...] = (
    error_details_pb2.BadRequest,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.QuotaFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.ErrorInfo,
    error_details_pb2.DebugInfo,
)


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass(eq=False)  # exceptions compare and hash by identity
class FlowsvcError(Exception):
    """A call that ended with a status other than OK.

    `code` is the gRPC status; `details` the decoded google.rpc messages the server attached
    (BadRequest, PreconditionFailure, QuotaFailure, ResourceInfo, RetryInfo, ...);
    `field_violations` the BadRequest ones, flattened, as bad input is what callers most often
    show to a person."""

    code: grpc.StatusCode
    message: str
    details: list[pb_message.Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def field_violations(self) -> list[FieldViolation]:
        return [
            FieldViolation(v.field, v.description)
            for d in self.details
            if isinstance(d, error_details_pb2.BadRequest)
            for v in d.field_violations
        ]

    @property
    def retry_delay(self) -> timedelta | None:
        """How long the server asked the caller to wait before trying again, if it said."""
        for d in self.details:
            if isinstance(d, error_details_pb2.RetryInfo) and d.HasField("retry_delay"):
                delay: timedelta = d.retry_delay.ToTimedelta()
                return delay
        return None

    def lines(self) -> list[str]:
        """The error as a person reads it: `CODE: message`, then one line per detail."""
        said = [f"{v.field or '(request)'}: {v.description}" for v in self.field_violations]
        for d in self.details:
            if isinstance(d, error_details_pb2.PreconditionFailure):
                said += [f"{p.subject or p.type}: {p.description}" for p in d.violations]
            elif isinstance(d, error_details_pb2.QuotaFailure):
                said += [f"{q.subject}: {q.description}" for q in d.violations]
        # A single detail is often the message itself: say it once.
        return [f"{self.code.name}: {self.message}"] + [
            f"  {line}" for line in said if line != self.message
        ]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _decode(status: status_pb2.Status) -> list[pb_message.Message]:
    out: list[pb_message.Message] = []
    for packed in status.details:
        for kind in _DETAIL_TYPES:
            if packed.Is(kind.DESCRIPTOR):
                detail = kind()
                packed.Unpack(detail)
                out.append(detail)
                break
    return out


def from_rpc_error(error: grpc.aio.AioRpcError) -> FlowsvcError:
    """The server's rich status (grpc-status-details-bin) when it sent one, else code and text."""
    details: list[pb_message.Message] = []
    trailing: Any = error.trailing_metadata() or ()
    for key, value in trailing:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                details = _decode(status_pb2.Status.FromString(value))
            except pb_message.DecodeError:
                details = []
    return FlowsvcError(error.code(), error.details() or "", details)
