"""Starts the real server for tests: in a thread of this process, or as a child process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from flowsvc.api.server import FlowServer
from flowsvc.app import create_server
from flowsvc.config import Settings, normalize_database_url
from flowsvc.domain.keys import Keys
from flowsvc.store.database import Database
from flowsvc.store.sql_store import SqlStore
from flowsvc.v1 import (
    eval_service_pb2_grpc,
    flow_run_service_pb2_grpc,
    live_flow_service_pb2_grpc,
    session_service_pb2_grpc,
)
from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import resources_pb2 as pb
from tests.graphs import struct

ROOT = Path(__file__).resolve().parent.parent


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def mint_key(database_url: str, org: str) -> str:
    """A key for `org`, minted through the domain straight into the database: what `keys
    create` does, without starting a process. Tests of the command itself run the CLI."""

    async def mint() -> str:
        database = Database(normalize_database_url(database_url))
        try:
            await database.migrate()
            return (await Keys(SqlStore(database)).mint(org)).secret
        finally:
            await database.close()

    return asyncio.run(mint())


class InProcessServer:
    """create_server() on port 0, run on an event loop in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.server: FlowServer
        self.server, self.port = self.run(create_server(settings))
        self.run(self.server.start())
        self.address = f"127.0.0.1:{self.port}"

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def stop(self) -> None:
        self.run(self.server.stop(1.0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


class ChildServer:
    """`python -m flowsvc serve` as a separate process, as an operator runs it."""

    def __init__(
        self,
        database_url: str,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
        listen: str = "127.0.0.1:0",
    ):
        """An empty database_url leaves the choice to the server's defaults. A fixed `listen`
        lets a restarted server come back where its clients look for it."""
        env = {**os.environ, **(extra_env or {})}
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()
        database = ["--database-url", database_url] if database_url else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowsvc", "serve", "--listen", listen, *database],
            stdout=self._log,
            stderr=self._log,
            env=env,
            cwd=ROOT,
        )
        self.address = f"127.0.0.1:{self._wait_for_port()}"

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if '"serving"' in line:
                    entry = json.loads(line)
                    if entry.get("pid", self.proc.pid) == self.proc.pid:
                        return int(re.split(":", entry["listen"])[-1])
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()}")
            time.sleep(0.05)
        raise TimeoutError("server did not report serving")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()


class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs

    def _with(self, details: Any) -> Any:
        metadata = list(details.metadata or []) + self._pairs
        return details._replace(metadata=metadata)

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._with(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._with(details), request)


@dataclass
class Client:
    """Stubs of every service on one channel, sending one organisation's key."""

    channel: grpc.Channel
    flows: live_flow_service_pb2_grpc.LiveFlowServiceStub
    sessions: session_service_pb2_grpc.SessionServiceStub
    runs: flow_run_service_pb2_grpc.FlowRunServiceStub
    evals: eval_service_pb2_grpc.EvalServiceStub

    def close(self) -> None:
        self.channel.close()


def connect(
    address: str,
    metadata: list[tuple[str, str]] | None = None,
    options: list[tuple[str, Any]] | None = None,
) -> Client:
    channel = grpc.insecure_channel(address, options=options or [])
    if metadata:
        channel = grpc.intercept_channel(channel, _Metadata(metadata))
    return Client(
        channel=channel,
        flows=live_flow_service_pb2_grpc.LiveFlowServiceStub(channel),
        sessions=session_service_pb2_grpc.SessionServiceStub(channel),
        runs=flow_run_service_pb2_grpc.FlowRunServiceStub(channel),
        evals=eval_service_pb2_grpc.EvalServiceStub(channel),
    )


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


@dataclass
class UnreadStreams:
    """A client that leaves a stream unread, and the server it calls."""

    client: Client
    server: InProcessServer

    def wait_cut_off(self, method: str) -> None:
        """Until the server has ended a stream of SessionService `method` with
        RESOURCE_EXHAUSTED: its write deadline runs only while nothing is read, so a test
        reads the stream after this, never before (runs can finish within the deadline)."""
        labels = {"grpc_method": method, "grpc_code": "RESOURCE_EXHAUSTED"}

        def cut_off() -> bool:
            text = scrape_metrics(self.server.server.metrics_port)
            return metric_count(text, "grpc_server_handled_total", **labels) >= 1

        wait_until(cut_off)


@contextmanager
def unread_streams_server(path: Path, **settings: Any) -> Iterator[UnreadStreams]:
    """A server on a new SQLite database at `path` (with `settings`, and metrics), and a client
    of organisation acme whose HTTP/2 window stays at its initial 64 KiB (no BDP probe), so
    that a stream it does not read fills up."""
    url = sqlite_url(path)
    server = InProcessServer(
        Settings(listen="127.0.0.1:0", database_url=url, metrics_listen="127.0.0.1:0", **settings)
    )
    c = connect(
        server.address, bearer(mint_key(url, "acme")), options=[("grpc.http2.bdp_probe", 0)]
    )
    try:
        yield UnreadStreams(c, server)
    finally:
        c.close()
        server.stop()


def scrape_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sample of `name` whose labels include `labels`."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels}")


def metric_count(text: str, name: str, **labels: str) -> float:
    """A counter's sample, 0 while it has none (nothing counted yet)."""
    try:
        return metric_value(text, name, **labels)
    except AssertionError:
        return 0.0


def run_big(c: Client, flow_id: str, session_id: str, runs: int) -> None:
    """Runs of `flow_id` (a flow of tests.graphs.create_request) on the session whose events
    carry ~50 KB of prompt or result each: 20 of them are megabytes, far past what the
    transport buffers for a client that never reads."""
    big = struct(question="x" * 50_000)
    for _ in range(runs):
        on_session = pb.RunOptions(session_id=session_id)
        run = c.runs.RunFlow(fr.RunFlowRequest(flow_id=flow_id, body=big, options=on_session))
        assert run.status == pb.RUN_STATUS_COMPLETE, run.error


def wait_until(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


def iter_lines(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            yield json.loads(line)
