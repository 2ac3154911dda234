"""Request bytes that do not make a message: over the size limit, or undecodable.

grpc calls a handler's request deserializer before any handler code runs, and when it raises
grpc answers UNKNOWN with the exception's text (and logs a traceback). So the guard gives every
handler a deserializer from here that never raises: bad bytes become a `Refusal` carrying the
domain error to answer with, and the guard raises it where its other errors are mapped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowsvc.domain.errors import DomainError, FieldViolation, InvalidArgument, ResourceExhausted

# What the request is, from protobuf's point of view, when it cannot be read.
UNDECODABLE = (
    "is not a valid {name} message: its bytes are truncated or corrupt, or nest more than "
    "100 levels deep"
)
# grpc core's own limit on received messages (it answers RESOURCE_EXHAUSTED, without details,
# before Python sees the bytes). It is set above flowsvc's limit so that a request somewhat too
# large reaches the deserializer, which refuses it with a QuotaFailure; it still bounds what a
# client can make the server buffer.
CORE_LIMIT_FACTOR = 2
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Refusal:
    """Stands in for a request that could not be read; the guard raises `error`."""

    error: DomainError


def core_receive_limit(max_request_bytes: int) -> int:
    """The value for grpc.max_receive_message_length (a C int in grpc core)."""
    return min(max_request_bytes * CORE_LIMIT_FACTOR, _INT32_MAX)


def _message_name(deserialize: Callable[[bytes], Any]) -> str:
    # Generated stubs pass `SomeMessage.FromString`, a classmethod bound to the message class.
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request"))


def checked(
    deserialize: Callable[[bytes], Any] | None, max_request_bytes: int
) -> Callable[[bytes], Any]:
    """`deserialize`, answering bad bytes with a Refusal instead of raising."""
    name = _message_name(deserialize) if deserialize is not None else "request"

    def read(raw: bytes) -> Any:
        if len(raw) > max_request_bytes:
            return Refusal(
                ResourceExhausted(
                    f"the request is {len(raw)} bytes; the limit is {max_request_bytes} "
                    "(max_request_bytes)",
                    subject="request",
                    limit="max_request_bytes",
                )
            )
        if deserialize is None:
            return raw
        try:
            return deserialize(raw)
        except Exception:
            # The deserializer is generated code and a pure function of the bytes: whatever
            # it raises (DecodeError, or RecursionError in the pure-Python protobuf) is about
            # the client's bytes, and its text only names protobuf internals.
            description = UNDECODABLE.format(name=name)
            return Refusal(
                InvalidArgument(
                    [FieldViolation("", description)], message=f"the request {description}"
                )
            )

    return read
