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
    session_service_pb2,
)

MODULES = (live_flow_service_pb2, session_service_pb2, flow_run_service_pb2, eval_service_pb2)


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


def caller(channel: grpc.Channel, rpc: Rpc) -> Callable[..., Any]:
    if rpc.streaming:
        return channel.unary_stream(
            rpc.path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=lambda b: b,
        )
    return channel.unary_unary(
        rpc.path,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=lambda b: b,
    )


def invoke(
    channel: grpc.Channel,
    rpc: Rpc,
    request: Any,
    metadata: list[tuple[str, str]],
    timeout: float = 10,
) -> grpc.StatusCode:
    """The status an RPC answers with; a stream is read for at most `timeout` seconds."""
    call = caller(channel, rpc)
    try:
        if rpc.streaming:
            stream = call(request, metadata=metadata, timeout=timeout)
            for _ in stream:
                pass
        else:
            call(request, metadata=metadata, timeout=timeout)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


FieldDescriptor = descriptor.FieldDescriptor
