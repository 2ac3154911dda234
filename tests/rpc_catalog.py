"""Every RPC of the contract, found from the descriptors, with a way to call it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor, symbol_database

from flowsvc.v1 import (
    eval_service_pb2,
    flow_run_service_pb2,
    live_flow_service_pb2,
    schedule_service_pb2,
    session_service_pb2,
    webhook_service_pb2,
)

MODULES = (
    live_flow_service_pb2,
    session_service_pb2,
    flow_run_service_pb2,
    eval_service_pb2,
    webhook_service_pb2,
    schedule_service_pb2,
)


@dataclass(frozen=True)
class Rpc:
    service: str
    name: str
    request: Any  # message class
    streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


def all_rpcs() -> list[Rpc]:
    db = symbol_database.Default()
    out = []
    for module in MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                out.append(
                    Rpc(
                        service.full_name,
                        method.name,
                        db.GetSymbol(method.input_type.full_name),
                        method.server_streaming,
                    )
                )
    return out


def _serialize(request: Any) -> bytes:
    # Raw bytes go on the wire as they are: the server sees whatever a broken client sends.
    return request if isinstance(request, bytes) else request.SerializeToString()  # type: ignore[no-any-return]


def caller(channel: grpc.Channel, rpc: Rpc) -> Callable[..., Any]:
    if rpc.streaming:
        return channel.unary_stream(
            rpc.path, request_serializer=_serialize, response_deserializer=lambda b: b
        )
    return channel.unary_unary(
        rpc.path, request_serializer=_serialize, response_deserializer=lambda b: b
    )


def failure(
    channel: grpc.Channel,
    rpc: Rpc,
    request: Any,
    metadata: list[tuple[str, str]],
    timeout: float = 10,
) -> grpc.RpcError | None:
    """The error an RPC answers with, if any; a stream is read for at most `timeout` seconds.
    `request` is a message, or bytes sent as they are."""
    call = caller(channel, rpc)
    try:
        if rpc.streaming:
            stream = call(request, metadata=metadata, timeout=timeout)
            for _ in stream:
                pass
        else:
            call(request, metadata=metadata, timeout=timeout)
    except grpc.RpcError as err:
        return err
    return None


def invoke(
    channel: grpc.Channel,
    rpc: Rpc,
    request: Any,
    metadata: list[tuple[str, str]],
    timeout: float = 10,
) -> grpc.StatusCode:
    """The status an RPC answers with; a stream is read for at most `timeout` seconds."""
    err = failure(channel, rpc, request, metadata, timeout)
    return grpc.StatusCode.OK if err is None else err.code()


FieldDescriptor = descriptor.FieldDescriptor
