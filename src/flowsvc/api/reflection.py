"""What server reflection serves: the contract's files as compiled with their source comments
(generated/flowsvc/v1/descriptors.binpb, made by `make proto`), so `grpcurl describe` shows each
RPC's and field's documentation, and methods resolve as symbols.

grpc_reflection asks its pool for files and copies them out with CopyToProto; protobuf's
runtime pools drop source comments and do not index methods. This object answers the same few
calls from the descriptor set instead, and leaves every other file (health, reflection) to the
default pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool

import flowsvc.v1

DESCRIPTOR_SET = Path(flowsvc.v1.__file__).with_name("descriptors.binpb")


class _File:
    """A file descriptor as reflection uses it: name, dependencies, CopyToProto."""

    def __init__(self, proto: descriptor_pb2.FileDescriptorProto, files: dict[str, Any]) -> None:
        self.name = proto.name
        self._proto = proto
        self._files = files

    @property
    def dependencies(self) -> list[Any]:
        return [self._files[name] for name in self._proto.dependency]

    def CopyToProto(self, out: descriptor_pb2.FileDescriptorProto) -> None:
        out.CopyFrom(self._proto)


def _drop_json_names(messages: Any) -> None:
    """protoc writes every field's default json_name into a descriptor set; grpcurl takes one
    that is present for a chosen name and would print `flowId` where it has always printed
    `flow_id`, as it does for descriptors that leave the name to the default."""
    for message in messages:
        for f in message.field:
            f.ClearField("json_name")
        _drop_json_names(message.nested_type)


class DocumentedPool:
    def __init__(self, path: Path = DESCRIPTOR_SET) -> None:
        fds = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
        self._pool = descriptor_pool.DescriptorPool()
        self._files: dict[str, Any] = {}
        for proto in fds.file:  # protoc writes them dependencies first
            _drop_json_names(proto.message_type)
            self._pool.Add(proto)
            self._files[proto.name] = _File(proto, self._files)
        self._default = descriptor_pool.Default()

    def FindFileByName(self, name: str) -> Any:
        return self._files.get(name) or self._default.FindFileByName(name)

    def FindFileContainingSymbol(self, symbol: str) -> Any:
        try:
            return self._files[self._pool.FindFileContainingSymbol(symbol).name]
        except KeyError:
            pass
        # A method (flowsvc.v1.FlowRunService.RunFlow) lives in its service's file.
        parent = symbol.rpartition(".")[0]
        try:
            return self._files[self._pool.FindServiceByName(parent).file.name]
        except KeyError:
            return self._default.FindFileContainingSymbol(symbol)

    def __getattr__(self, name: str) -> Any:
        # Extension lookups: the contract has none; the default pool answers for the rest.
        return getattr(self._default, name)
