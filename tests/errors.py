"""Reading rich gRPC errors in tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def rpc_error(call: Callable[[], Any], code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = info.value
    assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()}"
    return err


def field_violations(err: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status in the trailers"
    out: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            for v in bad.field_violations:
                out.setdefault(v.field, v.description)
    return out


def invalid(call: Callable[[], Any]) -> dict[str, str]:
    return field_violations(rpc_error(call, grpc.StatusCode.INVALID_ARGUMENT))


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status in the trailers"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo detail in {err.details()!r}")


def reused_request_id(call: Callable[[], Any]) -> str:
    """The request_id an ALREADY_EXISTS answer says was reused for a different request."""
    info = error_info(rpc_error(call, grpc.StatusCode.ALREADY_EXISTS))
    assert info.reason == "REQUEST_ID_REUSED", info
    return info.metadata["request_id"]
