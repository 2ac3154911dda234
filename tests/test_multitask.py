"""Multitask strategies: what a run sent to a session busy with another run does."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from flowsvc.config import Settings
from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss
from tests.fake_openai import FakeOpenAI
from tests.graphs import create_request, linear, step
from tests.harness import Client, InProcessServer, bearer, connect, mint_key, sqlite_url

PRICE = {"input": 1_000_000.0, "output": 0.0}  # USD per million: each input token is $1


@dataclass
class Busy:
    client: Client
    flow: pb.LiveFlow
    session_id: str
    slow_run_id: str
    watched: list[pb.RunEvent]
    watcher: threading.Thread
    stream: object


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    fake = FakeOpenAI()
    url = sqlite_url(tmp_path_factory.mktemp("db") / "flowsvc.db")
    server = InProcessServer(
        Settings(
            listen="127.0.0.1:0",
            database_url=url,
            openai_base_url=f"{fake.url}/v1",
            openai_api_key="sk-test",
            model_prices={"openai/stream": PRICE},
        )
    )
    c = connect(server.address, bearer(mint_key(url, "acme")))
    yield c
    c.close()
    server.stop()
    fake.close()


def _flow(c: Client) -> pb.LiveFlow:
    """A priced quick step, then a slow one (5 s): a run stays in flight at the second."""
    return c.flows.CreateLiveFlow(
        create_request(
            graph=linear(
                step("start", "START"),
                step("quick", "LLM", "hello", llm=pb.LlmConfig(model="openai/stream")),
                step("think", "LLM", "slowly", llm=pb.LlmConfig(model="openai/slow")),
                step("end", "END", "${think.result}"),
            )
        )
    )


def _busy(c: Client) -> Busy:
    flow = _flow(c)
    # A session whose first run completed (so it has a cost), then a slow run in flight.
    session = c.sessions.CreateSession(ss.CreateSessionRequest(live_flow_id=flow.id, wait=True))
    stream = c.sessions.WatchSession(ss.WatchSessionRequest(session_id=session.id))
    watched: list[pb.RunEvent] = []
    def watch() -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled by _finish
            watched.extend(stream)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    slow = c.runs.StreamRunFlow(
        fr.StreamRunFlowRequest(flow_id=flow.id, options=pb.RunOptions(session_id=session.id))
    )
    for event in slow:  # until the slow step has started
        if event.type == pb.RUN_EVENT_TYPE_STEP_STARTED and event.step.step.name == "think":
            break
    return Busy(c, flow, session.id, event.run_id, watched, watcher, stream)


def _run(b: Busy, strategy: int, **options: object) -> pb.FlowRun:
    return b.client.runs.RunFlow(
        fr.RunFlowRequest(
            flow_id=b.flow.id,
            options=pb.RunOptions(session_id=b.session_id, multitask_strategy=strategy, **options),
        ),
        timeout=30,
    )


def _finish(b: Busy) -> list[pb.RunEvent]:
    b.stream.cancel()  # type: ignore[attr-defined]
    b.watcher.join(timeout=10)
    return b.watched


def test_reject_refuses_with_aborted_while_another_run_goes(client: Client) -> None:
    b = _busy(client)
    with pytest.raises(grpc.RpcError) as info:
        _run(b, pb.MULTITASK_STRATEGY_REJECT)
    assert info.value.code() == grpc.StatusCode.ABORTED
    _finish(b)


def test_no_wait_with_another_strategy_is_a_contradiction(client: Client) -> None:
    flow = _flow(client)
    with pytest.raises(grpc.RpcError) as info:
        client.runs.RunFlow(
            fr.RunFlowRequest(
                flow_id=flow.id,
                options=pb.RunOptions(
                    no_wait=True, multitask_strategy=pb.MULTITASK_STRATEGY_INTERRUPT
                ),
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_interrupt_cancels_the_run_going_keeping_its_steps_then_runs(client: Client) -> None:
    b = _busy(client)
    before = client.sessions.GetSession(ss.GetSessionRequest(id=b.session_id))
    run = _run(b, pb.MULTITASK_STRATEGY_INTERRUPT)
    assert run.status == pb.RUN_STATUS_COMPLETE
    slow = client.runs.GetFlowRun(fr.GetFlowRunRequest(id=b.slow_run_id))
    assert slow.status == pb.RUN_STATUS_CANCELLED
    session = client.sessions.GetSession(ss.GetSessionRequest(id=b.session_id))
    kept = [s for s in session.steps if s.run_id == b.slow_run_id]
    assert [s.step.name for s in kept] == ["start", "quick", "think"]
    assert session.cost > before.cost  # the interrupted run's quick step still counts
    events = _finish(b)
    types = [(e.run_id, e.type) for e in events if e.seq]
    assert types.index((b.slow_run_id, pb.RUN_EVENT_TYPE_RUN_CANCELLED)) < types.index(
        (run.id, pb.RUN_EVENT_TYPE_RUN_STARTED)
    )


def test_rollback_removes_the_run_going_from_the_session_then_runs(client: Client) -> None:
    b = _busy(client)
    run = _run(b, pb.MULTITASK_STRATEGY_ROLLBACK)
    assert run.status == pb.RUN_STATUS_COMPLETE
    session = client.sessions.GetSession(ss.GetSessionRequest(id=b.session_id))
    assert not [s for s in session.steps if s.run_id == b.slow_run_id]
    assert session.steps_count == len(session.steps)
    # Costs as if it never ran: the first run and the new one, each one quick step.
    first_and_new = [s for s in session.steps if s.step.name == "quick"]
    assert len(first_and_new) == 2
    assert session.cost == pytest.approx(sum(s.cost for s in first_and_new))
    events = _finish(b)
    seqs = [e.seq for e in events if e.seq]
    assert seqs == list(range(1, len(seqs) + 1))
    ordered = [(e.run_id, e.type) for e in events if e.seq]
    cancelled = ordered.index((b.slow_run_id, pb.RUN_EVENT_TYPE_RUN_CANCELLED))
    rolled_back = ordered.index((b.slow_run_id, pb.RUN_EVENT_TYPE_RUN_ROLLED_BACK))
    assert cancelled < rolled_back < ordered.index((run.id, pb.RUN_EVENT_TYPE_RUN_STARTED))


def test_enqueue_waits_for_the_run_going(client: Client) -> None:
    b = _busy(client)
    run = _run(b, pb.MULTITASK_STRATEGY_ENQUEUE)
    assert run.status == pb.RUN_STATUS_COMPLETE
    slow = client.runs.GetFlowRun(fr.GetFlowRunRequest(id=b.slow_run_id))
    assert slow.status == pb.RUN_STATUS_COMPLETE
    assert slow.end_time.ToDatetime() <= run.start_time.ToDatetime()
    _finish(b)
