"""Races one event-loop turn wide, so these reach into the server's engine: a run cancelled
before its task ran a line (a task cancelled then never runs its body) is still recorded as
cancelled; a run launched at once never overtakes a run only the database knew of."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowsvc.config import Settings
from flowsvc.domain.run_requests import RunOptions
from flowsvc.domain.runs import Journal, RunStatus, SessionStatus, StepStatus
from flowsvc.v1 import flow_run_service_pb2 as fr
from tests.graphs import create_request, struct, with_input
from tests.harness import Client, InProcessServer, bearer, connect, mint_key, sqlite_url

ORG = "acme"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[InProcessServer, Client]]:
    url = sqlite_url(tmp_path / "db.sqlite")
    server = InProcessServer(Settings(listen="127.0.0.1:0", database_url=url))
    client = connect(server.address, bearer(mint_key(url, ORG)))
    yield server, client
    client.close()
    server.stop()


def test_a_run_launched_at_once_and_cancelled_before_it_began_is_recorded_cancelled(
    served: tuple[InProcessServer, Client],
) -> None:
    server, client = served
    app = server.server
    flow = client.flows.CreateLiveFlow(create_request())
    first = client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="q")))

    async def launch_and_cancel() -> None:
        started = await app.sessions._flow_runs.start(
            ORG, flow.id, {"question": "q"}, "", RunOptions(session_id=first.session_id)
        )
        run_id = started.run.id
        assert run_id not in app.engine._begun  # the window this test is about
        state = app.engine.sessions.states[first.session_id]
        await app.engine.cancel_run(state, run_id)
        run = await app.run_store.get_run(ORG, run_id)
        assert run is not None and run.status is RunStatus.CANCELLED

    server.run(launch_and_cancel())


def test_an_answered_run_cancelled_before_it_went_on_cancels_its_session(
    served: tuple[InProcessServer, Client],
) -> None:
    server, client = served
    app = server.server
    flow = client.flows.CreateLiveFlow(create_request(name="asks", graph=with_input()))
    waiting = client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(topic="moons")))

    async def answer_and_cancel() -> None:
        async with app.engine.session_state(ORG, waiting.session_id) as state:
            run_id = await app.engine.submit_input(state, "how many?", "", "")
            assert run_id not in app.engine._begun
            await app.engine.cancel_run(state, run_id)
        run = await app.run_store.get_run(ORG, run_id)
        session = await app.run_store.get_session(ORG, waiting.session_id)
        assert run is not None and run.status is RunStatus.CANCELLED
        assert session is not None and session.status is SessionStatus.CANCELLED
        assert all(s.status is not StepStatus.RUNNING for s in run.steps)

    server.run(answer_and_cancel())


def test_a_run_on_a_session_claimed_without_its_runs_known_lets_queued_ones_go_first(
    served: tuple[InProcessServer, Client],
) -> None:
    """A run only the database knows (queued while the session was not held here) goes
    before a new one, even when something else claimed the session in between."""
    server, client = served
    app = server.server
    flow_runs = app.sessions._flow_runs
    flow = client.flows.CreateLiveFlow(create_request())
    first = client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="q")))

    async def queue_touch_and_run() -> None:
        session_id = first.session_id
        while session_id in app.engine.sessions.states:  # kept a moment after its run
            await asyncio.sleep(0.05)
        _, version = await flow_runs.flow_and_version(ORG, flow.id, 0, "flow_id", "version")
        left = flow_runs.new_run(
            ORG, flow.id, session_id, version, {"question": "left over"}, RunOptions(), ""
        )
        await app.run_store.record(Journal(new_runs=[left]))
        async with app.engine.session_state(ORG, session_id):
            pass  # claimed and let go (an expiry check, a cancel of nothing)
        started = await flow_runs.start(
            ORG, flow.id, {"question": "new"}, "", RunOptions(session_id=session_id)
        )
        assert (await flow_runs.finished_by_id(ORG, started.run.id)).status is RunStatus.COMPLETE
        earlier = await app.run_store.get_run(ORG, left.id)
        assert earlier is not None and earlier.status is RunStatus.COMPLETE
        assert earlier.end_time is not None and started.run.id != left.id
        newer = await app.run_store.get_run(ORG, started.run.id)
        assert newer is not None and newer.start_time is not None
        assert earlier.end_time <= newer.start_time  # it went first

    server.run(queue_touch_and_run())
