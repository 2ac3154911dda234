"""The call guard fails closed: a handler it cannot authenticate is refused, never served.

flowsvc's own services have no such handler, so these tests put the real guard, on the real key
store, in front of a probe service that has one of each kind the guard does not wrap."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from flowsvc.api.guard import CallGuard
from flowsvc.domain.keys import Keys
from flowsvc.store.database import Database
from flowsvc.store.sql_store import SqlStore
from tests.conftest import Deployment
from tests.harness import bearer, mint_key, sqlite_url

PROBE = "flowsvc.v1.Probe"


class GuardedProbe:
    """A grpc.aio server with CallGuard and the probe service, on a loop in a thread."""

    def __init__(self, database_url: str) -> None:
        self.ran: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.address = self._run(self._start(database_url))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    async def _start(self, database_url: str) -> str:
        self._database = Database(database_url)
        await self._database.migrate()
        self._server = grpc.aio.server(
            interceptors=[CallGuard(Keys(SqlStore(self._database)), 1 << 20)]
        )

        async def upload(requests: Any, context: Any) -> bytes:
            self.ran.append("Upload")
            return b"served"

        async def chat(requests: Any, context: Any) -> AsyncIterator[bytes]:
            self.ran.append("Chat")
            yield b"served"

        async def feed(request: bytes, context: Any) -> AsyncIterator[bytes]:
            self.ran.append("Feed")
            yield b"served"

        self._server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    PROBE,
                    {
                        "Upload": grpc.stream_unary_rpc_method_handler(upload),
                        "Chat": grpc.stream_stream_rpc_method_handler(chat),
                        "Feed": grpc.unary_stream_rpc_method_handler(feed),
                    },
                )
            ]
        )
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return f"127.0.0.1:{port}"

    async def _stop(self) -> None:
        await self._server.stop(None)
        await self._database.close()

    def stop(self) -> None:
        self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GuardedProbe, str]]:
    url = sqlite_url(tmp_path_factory.mktemp("guard") / "flowsvc.db")
    server = GuardedProbe(url)
    try:
        yield server, mint_key(url, "acme")
    finally:
        server.stop()


def _call(channel: grpc.Channel, name: str, metadata: list[tuple[str, str]]) -> None:
    path = f"/{PROBE}/{name}"
    if name == "Upload":
        channel.stream_unary(path)(iter([b"x"]), metadata=metadata, timeout=10)
    elif name == "Chat":
        list(channel.stream_stream(path)(iter([b"x"]), metadata=metadata, timeout=10))
    else:
        list(channel.unary_stream(path)(b"x", metadata=metadata, timeout=10))


@pytest.mark.parametrize("name", ["Upload", "Chat", "Feed"])
@pytest.mark.parametrize("with_key", [True, False], ids=["with_key", "without_key"])
def test_a_handler_the_guard_cannot_authenticate_is_refused_and_never_runs(
    probe: tuple[GuardedProbe, str], name: str, with_key: bool
) -> None:
    server, key = probe
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as info:
        _call(channel, name, bearer(key) if with_key else [])
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED, info.value.details()
    assert name not in server.ran


def test_a_method_the_server_does_not_have_is_unimplemented(deployment: Deployment) -> None:
    with grpc.insecure_channel(deployment.address) as channel:
        call = channel.unary_unary("/flowsvc.v1.LiveFlowService/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as info:
            call(b"", metadata=bearer(deployment.acme_key), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
