"""The domain's own error classes. The API layer maps each to one gRPC status."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    """Base of every error a caller is meant to see."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    def __init__(self, violations: Iterable[FieldViolation], message: str | None = None) -> None:
        self.violations = tuple(violations)
        if message is None:
            first = self.violations[0] if self.violations else None
            message = f"{first.field}: {first.description}" if first else "invalid argument"
            if len(self.violations) > 1:
                message += f" (and {len(self.violations) - 1} more)"
        super().__init__(message)

    @classmethod
    def one(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class NotFound(DomainError):
    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} not found")
        self.kind = kind
        self.ident = ident


class AlreadyExists(DomainError):
    def __init__(self, message: str, *, reason: str = "", metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.reason = reason
        self.metadata = dict(metadata or {})

    @classmethod
    def request_id_reused(cls, request_id: str) -> AlreadyExists:
        """A request_id already used for a different request (RPC, resource or fields)."""
        return cls(
            f"request_id {request_id!r} was already used for a different request",
            reason="REQUEST_ID_REUSED",
            metadata={"request_id": request_id},
        )


class FailedPrecondition(DomainError):
    """The resource is not in a state that allows the call."""

    def __init__(self, message: str, *, kind: str = "STATE", subject: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.subject = subject


class Aborted(DomainError):
    pass


class ResourceExhausted(DomainError):
    def __init__(self, message: str, *, subject: str = "", limit: str = "") -> None:
        super().__init__(message)
        self.subject = subject
        self.limit = limit


class Unauthenticated(DomainError):
    pass


class PermissionDenied(DomainError):
    pass


class DeadlineExceeded(DomainError):
    pass


class Unavailable(DomainError):
    """This server cannot go on with the call (it is shutting down, or its database cannot be
    reached); the same call can succeed again, here later or on another replica."""


class LeaseLost(Unavailable):
    """A write named a lease epoch that is no longer the session's: another replica took the
    session over. Not a caller's error: the run that saw it stops without writing more."""


class RequestIdTaken(Exception):
    """A write carried a request_id another request (maybe on another replica) committed
    first: the caller answers with what that request made."""
