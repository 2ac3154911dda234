"""The server as an operator runs it: health, reflection, signals, restarts, logs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flowsvc.api.server import SERVICE_NAMES
from flowsvc.v1 import live_flow_service_pb2 as svc
from tests import postgres
from tests.conftest import Deployment
from tests.graphs import create_request
from tests.harness import ChildServer, bearer, connect, iter_lines, mint_key, sqlite_url

SERVING = health_pb2.HealthCheckResponse.SERVING


def test_health_is_serving_overall_and_per_service(deployment: Deployment) -> None:
    with grpc.insecure_channel(deployment.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", *SERVICE_NAMES):
            assert stub.Check(health_pb2.HealthCheckRequest(service=name)).status == SERVING


def test_health_of_unknown_service_is_not_found(deployment: Deployment) -> None:
    with grpc.insecure_channel(deployment.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            stub.Check(health_pb2.HealthCheckRequest(service="nope.Service"))
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
        else:
            raise AssertionError("expected NOT_FOUND")


def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "db.sqlite")
    server = ChildServer(url, tmp_path / "server.log")
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    messages = [e["msg"] for e in iter_lines(tmp_path / "server.log")]
    assert messages[-2:] == ["draining", "stopped"]


def test_sigterm_ends_an_idle_watch_at_once_with_a_resume_hint(tmp_path: Path) -> None:
    """Streams never finish by themselves: the drain ends them rather than wait out the grace
    period (deliberately long here), and tells the client where to resume."""
    from flowsvc.v1 import flow_run_service_pb2 as fr
    from flowsvc.v1 import session_service_pb2 as ss
    from tests.graphs import struct

    url = sqlite_url(tmp_path / "db.sqlite")
    key = mint_key(url, "acme")
    server = ChildServer(url, tmp_path / "server.log", {"FLOWSVC_GRACE_SECONDS": "30"})
    try:
        c = connect(server.address, bearer(key))
        flow = c.flows.CreateLiveFlow(create_request())
        run = c.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="q")))
        last = max(e.seq for e in c.runs.WatchRun(fr.WatchRunRequest(run_id=run.id)))
        watch = c.sessions.WatchSession(
            ss.WatchSessionRequest(session_id=run.session_id, after_seq=last - 1), timeout=20
        )
        assert next(watch).seq == last  # caught up: from here on the stream is idle

        server.signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as info:
            next(watch)
        c.close()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
        assert f"resume with after_seq={last}" in (info.value.details() or "")
        assert server.wait(timeout=15) == 0  # well inside the 30 s grace period
    finally:
        if server.proc.poll() is None:  # a failed run must not leave the server behind
            server.proc.kill()
            server.wait()


def test_sigint_exits_zero(tmp_path: Path) -> None:
    server = ChildServer(sqlite_url(tmp_path / "db.sqlite"), tmp_path / "server.log")
    server.signal(signal.SIGINT)
    assert server.wait() == 0


def test_restart_keeps_every_flow_and_version(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "db.sqlite")
    key = mint_key(url, "acme")
    first = ChildServer(url, tmp_path / "first.log")
    c = connect(first.address, bearer(key))
    flow = c.flows.CreateLiveFlow(create_request("durable"))
    v2 = c.flows.CreateFlowVersion(
        svc.CreateFlowVersionRequest(
            flow_id=flow.id,
            steps=flow.current_version.steps,
            step_transitions=flow.current_version.step_transitions,
        )
    )
    c.close()
    first.signal(signal.SIGTERM)
    assert first.wait() == 0

    second = ChildServer(url, tmp_path / "second.log")
    try:
        c = connect(second.address, bearer(key))
        got = c.flows.GetLiveFlow(svc.GetLiveFlowRequest(id=flow.id))
        assert got.name == "durable" and got.current_version == v2
        versions = c.flows.ListFlowVersions(svc.ListFlowVersionsRequest(flow_id=flow.id))
        assert [v.version for v in versions.flow_versions] == [2, 1]
        c.close()
    finally:
        second.signal(signal.SIGTERM)
        second.wait()


def test_each_call_is_logged_with_method_code_and_duration(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "db.sqlite")
    server = ChildServer(url, tmp_path / "server.log")
    try:
        c = connect(server.address)
        sent = time.perf_counter()
        with contextlib.suppress(grpc.RpcError):
            c.flows.ListLiveFlows(svc.ListLiveFlowsRequest())
        seen_by_client_ms = (time.perf_counter() - sent) * 1000
        c.close()
    finally:
        server.signal(signal.SIGTERM)
        server.wait()
    calls = [e for e in iter_lines(tmp_path / "server.log") if e["msg"] == "rpc"]
    assert calls[-1]["method"] == "/flowsvc.v1.LiveFlowService/ListLiveFlows"
    assert calls[-1]["code"] == "UNAUTHENTICATED"
    # In milliseconds, and within what the client waited for the answer.
    assert 0 < calls[-1]["duration_ms"] <= seen_by_client_ms


def test_keys_never_reach_the_log(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "db.sqlite")
    key = mint_key(url, "acme")
    server = ChildServer(url, tmp_path / "server.log")
    try:
        c = connect(server.address, bearer(key))
        c.flows.CreateLiveFlow(create_request())
        c.close()
    finally:
        server.signal(signal.SIGTERM)
        server.wait()
    assert key.split("_", 2)[2] not in (tmp_path / "server.log").read_text()


def test_serve_refuses_a_port_in_use(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "db.sqlite")
    server = ChildServer(url, tmp_path / "server.log")
    try:
        busy = subprocess.run(
            [
                sys.executable,
                "-m",
                "flowsvc",
                "serve",
                "--listen",
                server.address,
                "--database-url",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert busy.returncode != 0
        assert "cannot listen" in busy.stderr
    finally:
        server.signal(signal.SIGTERM)
        server.wait()


def _serve(
    database_url: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowsvc", "serve", "--listen", "127.0.0.1:0",
         "--database-url", database_url],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("FLOWSVC_MAX_PAGE_SIZE", "abc", "FLOWSVC_MAX_PAGE_SIZE='abc': not a whole number"),
        ("FLOWSVC_LEASE_SECONDS", "1,5", "FLOWSVC_LEASE_SECONDS='1,5': not a number"),
        ("FLOWSVC_MODEL_PRICES", "{bad", "FLOWSVC_MODEL_PRICES: not JSON"),
        ("FLOWSVC_LOG_LEVEL", "loud", "FLOWSVC_LOG_LEVEL='loud': one of CRITICAL, FATAL"),
        ("FLOWSVC_SQLITE_SYNCHRONOUS", "7", "FLOWSVC_SQLITE_SYNCHRONOUS='7': one of OFF, NORMAL"),
    ],
)
def test_serve_refuses_a_setting_that_does_not_parse_naming_it(
    tmp_path: Path, variable: str, value: str, said: str
) -> None:
    refused = _serve(sqlite_url(tmp_path / "db.sqlite"), {variable: value})
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"flowsvc: {said}")
    assert "Traceback" not in refused.stderr


def test_serve_says_in_one_line_why_it_has_no_database() -> None:
    postgres.require()
    missing = postgres.ADMIN.rsplit("/", 1)[0] + "/flowsvc_no_such_database"
    refused = _serve(missing)
    assert refused.returncode == 1
    assert 'flowsvc: no database to serve: ' in refused.stderr
    assert 'database "flowsvc_no_such_database" does not exist' in refused.stderr
    assert "Traceback" not in refused.stderr


def test_log_lines_are_json(tmp_path: Path) -> None:
    server = ChildServer(sqlite_url(tmp_path / "db.sqlite"), tmp_path / "server.log")
    server.signal(signal.SIGTERM)
    server.wait()
    lines = [ln for ln in (tmp_path / "server.log").read_text().splitlines() if ln.strip()]
    assert lines and all(isinstance(json.loads(ln), dict) for ln in lines)


def test_a_read_never_waits_on_a_second_pooled_connection(tmp_path: Path) -> None:
    """Found by W4: a read that loaded a flow version on a second pooled connection while
    holding one waited on itself once the pool was full. With one pooled connection and
    nothing cached, the first GetSession shows it."""
    from flowsvc.config import Settings
    from flowsvc.v1 import flow_run_service_pb2 as fr
    from flowsvc.v1 import session_service_pb2 as ss
    from tests.graphs import struct
    from tests.harness import InProcessServer

    url = sqlite_url(tmp_path / "db.sqlite")
    key = mint_key(url, "acme")
    first = InProcessServer(Settings(listen="127.0.0.1:0", database_url=url))
    c = connect(first.address, bearer(key))
    run = c.runs.RunFlow(
        fr.RunFlowRequest(
            flow_id=c.flows.CreateLiveFlow(create_request()).id, body=struct(question="q")
        )
    )
    c.close()
    first.stop()
    second = InProcessServer(Settings(listen="127.0.0.1:0", database_url=url, read_pool_size=1))
    try:
        c = connect(second.address, bearer(key))
        session = c.sessions.GetSession(ss.GetSessionRequest(id=run.session_id), timeout=10)
        assert session.steps_count == 5
        c.close()
    finally:
        second.stop()


def test_unexpected_failure_is_internal_with_a_correlation_id_and_no_internals(
    tmp_path: Path,
) -> None:
    import sqlite3

    from flowsvc.config import Settings
    from flowsvc.v1 import flow_run_service_pb2 as fr
    from flowsvc.v1 import session_service_pb2 as ss
    from tests.graphs import struct
    from tests.harness import InProcessServer

    url = sqlite_url(tmp_path / "db.sqlite")
    key = mint_key(url, "acme")
    server = InProcessServer(Settings(listen="127.0.0.1:0", database_url=url))
    try:
        c = connect(server.address, bearer(key))
        run = c.runs.RunFlow(
            fr.RunFlowRequest(
                flow_id=c.flows.CreateLiveFlow(create_request()).id, body=struct(question="q")
            )
        )
        # A row no version of flowsvc writes: reading it fails in a way no request can cause.
        with sqlite3.connect(tmp_path / "db.sqlite") as db:
            db.execute("UPDATE sessions SET status = 'BOGUS' WHERE id = ?", (run.session_id,))
        try:
            c.sessions.GetSession(ss.GetSessionRequest(id=run.session_id))
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INTERNAL
            details = err.details() or ""
            assert "correlation id" in details
            assert "BOGUS" not in details and "Error" not in details
        else:
            raise AssertionError("expected INTERNAL")
        c.close()
    finally:
        server.stop()
