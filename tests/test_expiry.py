"""Session expiry, driven by a clock the test moves (time is outside the service)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from flowsvc.config import Settings
from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss
from tests.errors import rpc_error
from tests.graphs import create_request, struct, with_input
from tests.harness import Client, InProcessServer, bearer, connect, mint_key, sqlite_url


class MovableClock:
    def __init__(self) -> None:
        self._offset = timedelta()
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return datetime.now(UTC) + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += timedelta(seconds=seconds)


@dataclass
class Timed:
    client: Client
    clock: MovableClock


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Timed]:
    url = sqlite_url(tmp_path_factory.mktemp("clock") / "db.sqlite")
    clock = MovableClock()
    server = InProcessServer(Settings(listen="127.0.0.1:0", database_url=url, clock=clock))
    c = connect(server.address, bearer(mint_key(url, "acme")))
    yield Timed(c, clock)
    c.close()
    server.stop()


def waiting_session(t: Timed, expiration: int = 60) -> pb.Session:
    flow = t.client.flows.CreateLiveFlow(create_request(graph=with_input()))
    return t.client.sessions.CreateSession(
        ss.CreateSessionRequest(
            live_flow_id=flow.id, inputs=struct(topic="t"), expiration_seconds=expiration, wait=True
        )
    )


def test_expires_at_follows_expiration_seconds(timed: Timed) -> None:
    s = waiting_session(timed, 120)
    assert s.expires_at.ToDatetime() - s.created_at.ToDatetime() == timedelta(seconds=120)


def test_session_past_its_expiry_reads_as_expired(timed: Timed) -> None:
    s = waiting_session(timed)
    timed.clock.advance(61)
    got = timed.client.sessions.GetSession(ss.GetSessionRequest(id=s.id))
    assert got.status == pb.SESSION_STATUS_EXPIRED


def test_expired_session_refuses_input(timed: Timed) -> None:
    s = waiting_session(timed)
    timed.clock.advance(61)
    rpc_error(
        lambda: timed.client.sessions.SubmitUserInput(
            ss.SubmitUserInputRequest(session_id=s.id, user_input="late")
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    run_id = s.current_step.run_id
    run = timed.client.runs.GetFlowRun(fr.GetFlowRunRequest(id=run_id))
    assert run.status == pb.RUN_STATUS_ERROR and "expired" in run.error


def test_expired_session_refuses_runs(timed: Timed) -> None:
    flow = timed.client.flows.CreateLiveFlow(create_request())
    first = timed.client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="q")))
    timed.clock.advance(86_401)
    rpc_error(
        lambda: timed.client.runs.RunFlow(
            fr.RunFlowRequest(
                flow_id=flow.id,
                body=struct(question="q"),
                options=pb.RunOptions(session_id=first.session_id),
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


def test_session_before_its_expiry_still_takes_input(timed: Timed) -> None:
    s = waiting_session(timed, 3600)
    timed.clock.advance(3000)
    done = timed.client.sessions.SubmitUserInput(
        ss.SubmitUserInputRequest(session_id=s.id, user_input="x", wait=True)
    )
    assert done.status == pb.SESSION_STATUS_COMPLETED


def test_an_expired_session_can_be_forked_into_a_live_one(timed: Timed) -> None:
    s = waiting_session(timed)
    timed.clock.advance(61)
    expired = timed.client.sessions.GetSession(ss.GetSessionRequest(id=s.id))
    assert expired.status == pb.SESSION_STATUS_EXPIRED
    fork = timed.client.sessions.ForkSession(
        ss.ForkSessionRequest(session_id=s.id, step_id=expired.steps[0].id, wait=True)
    )
    assert fork.status == pb.SESSION_STATUS_WAITING_FOR_INPUT
    assert fork.parent_session_id == s.id and fork.expiration_seconds == 60
    assert fork.expires_at.ToDatetime() > expired.expires_at.ToDatetime()
    again = timed.client.sessions.GetSession(ss.GetSessionRequest(id=s.id))
    assert again == expired
