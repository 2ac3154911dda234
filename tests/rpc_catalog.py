"""Every RPC of the contract, found from the descriptors, with a way to call it."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pb2, symbol_database

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

PROTOS = Path(__file__).resolve().parent.parent / "protos"
_ERRORS = re.compile(r"\bErrors:(.*)", re.DOTALL)
_PARENTHESES = re.compile(r"\([^()]*\)")
_CODE_NAMES = {code.name: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class Documented:
    """The codes a comment's "Errors:" part names: of every RPC of the service (`common`,
    from the service's comment) and of the RPC itself (`own`, from the RPC's comment)."""

    common: frozenset[grpc.StatusCode]
    own: frozenset[grpc.StatusCode]

    @property
    def all(self) -> frozenset[grpc.StatusCode]:
        return self.common | self.own


def error_codes(comment: str) -> frozenset[grpc.StatusCode]:
    """The status codes named after "Errors:" in a comment; text in parentheses (the when) is
    left out, and so is everything before "Errors:"."""
    found = _ERRORS.search(comment)
    if found is None:
        return frozenset()
    text = _PARENTHESES.sub(" ", found.group(1))
    return frozenset(_CODE_NAMES[w] for w in re.findall(r"\b[A-Z_]+\b", text) if w in _CODE_NAMES)


@functools.cache
def _comments() -> dict[str, str]:
    """Leading comments of services ("pkg.Service") and RPCs ("/pkg.Service/Method"), read
    from the .proto sources by protoc."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{PROTOS}",
                "--include_source_info",
                f"--descriptor_set_out={out}",
                *map(str, sorted((PROTOS / "flowsvc" / "v1").glob("*.proto"))),
            ],
            check=True,
            capture_output=True,
        )
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    comments: dict[str, str] = {}
    for f in files.file:
        where = {tuple(loc.path): loc.leading_comments for loc in f.source_code_info.location}
        for s, service in enumerate(f.service):
            name = f"{f.package}.{service.name}"
            comments[name] = where.get((6, s), "")
            for m, method in enumerate(service.method):
                comments[f"/{name}/{method.name}"] = where.get((6, s, 2, m), "")
    return comments


def documented(rpc: Rpc) -> Documented:
    """The codes the contract says `rpc` can answer (besides OK)."""
    comments = _comments()
    return Documented(error_codes(comments[rpc.service]), error_codes(comments[rpc.path]))
