"""The one table from domain errors to gRPC status codes and google.rpc error details."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from flowsvc.domain import errors

ERROR_DOMAIN = "flowsvc.v1"

_CODES: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _details(exc: errors.DomainError) -> list[any_pb2.Any]:
    detail: object | None = None
    if isinstance(exc, errors.InvalidArgument):
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in exc.violations
            ]
        )
    elif isinstance(exc, errors.FailedPrecondition):
        detail = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=exc.kind, subject=exc.subject, description=exc.message
                )
            ]
        )
    elif isinstance(exc, errors.ResourceExhausted):
        detail = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=exc.subject or exc.limit, description=exc.message
                )
            ]
        )
    elif isinstance(exc, errors.AlreadyExists) and exc.reason:
        detail = error_details_pb2.ErrorInfo(
            reason=exc.reason, domain=ERROR_DOMAIN, metadata=exc.metadata
        )
    elif isinstance(exc, errors.NotFound):
        detail = error_details_pb2.ResourceInfo(
            resource_type=exc.kind, resource_name=exc.ident, description=exc.message
        )
    if detail is None:
        return []
    packed = any_pb2.Any()
    packed.Pack(detail)  # type: ignore[arg-type]
    return [packed]


def code_of(exc: errors.DomainError) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        if kind in _CODES:
            return _CODES[kind]
    return grpc.StatusCode.INTERNAL


def rich_status(
    code: grpc.StatusCode, message: str, details: list[any_pb2.Any]
) -> status_pb2.Status:
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)


def status_of(exc: errors.DomainError) -> tuple[grpc.StatusCode, str, status_pb2.Status]:
    code = code_of(exc)
    return code, exc.message, rich_status(code, exc.message, _details(exc))
