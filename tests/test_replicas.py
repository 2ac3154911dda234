"""Several replicas on one PostgreSQL database: whatever replica a call reaches, it acts on
sessions and runs executing on another, as if there were one server."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss
from tests.graphs import linear, long_chain, step, struct, with_input
from tests.harness import ChildServer, sqlite_url, wait_until
from tests.postgres import fresh_database
from tests.replicas import (
    SERVING,
    Cluster,
    GatedOpenAI,
    assert_each_step_once,
    assert_gapless,
    cluster,
    gated_flow,
    health,
    new_flow,
    rows,
    session_status,
    stored_events,
)

DELTA = pb.RUN_EVENT_TYPE_STEP_DELTA


def _openai_env(fake: GatedOpenAI) -> dict[str, str]:
    return {"FLOWSVC_OPENAI_BASE_URL": f"{fake.url}/v1", "FLOWSVC_OPENAI_API_KEY": "x"}


def _run_of(client, session_id: str) -> fr.FlowRun:  # type: ignore[no-untyped-def]
    listed = client.runs.ListFlowRuns(fr.ListFlowRunsRequest(session_id=session_id)).flow_runs
    assert len(listed) == 1
    return listed[0]


def test_watch_on_one_replica_follows_a_run_executing_on_another(tmp_path: Path) -> None:
    fake = GatedOpenAI()
    with fresh_database() as url, cluster(url, tmp_path, _openai_env(fake)) as c:
        try:
            c.start(2)
            a, b = c.clients
            flow = new_flow(a, gated_flow(after=20))
            session = a.sessions.CreateSession(ss.CreateSessionRequest(live_flow_id=flow)).id
            seen: list[pb.RunEvent] = []
            gate_opened_at: list[int] = []  # how many events the watcher had by then
            failure: list[BaseException] = []

            def watch() -> None:
                stream = b.sessions.WatchSession(
                    ss.WatchSessionRequest(session_id=session), timeout=120
                )
                try:
                    for event in stream:
                        if event.type == DELTA:
                            continue
                        seen.append(event)
                        if event.type == pb.RUN_EVENT_TYPE_RUN_COMPLETED:
                            stream.cancel()
                            return
                except BaseException as exc:
                    failure.append(exc)

            watcher = threading.Thread(target=watch)
            watcher.start()
            # The run waits in its model call on A while B's watcher has what is committed.
            wait_until(lambda: fake.entered >= 1, timeout=60)
            wait_until(
                lambda: any(
                    e.type == pb.RUN_EVENT_TYPE_STEP_STARTED and e.step.step.name == "think"
                    for e in list(seen)
                ),
                timeout=60,
            )
            gate_opened_at.append(len(seen))
            fake.gate.set()
            watcher.join(timeout=120)
            assert not watcher.is_alive(), "the watch on B never saw the run complete"
            assert not failure, failure
            stored = stored_events(url, session)
            # Live on B: most of the run happened after the watcher had caught up.
            assert len(stored) - gate_opened_at[0] > 40
            assert [e.seq for e in seen] == list(range(1, len(stored) + 1))
            assert [pb.RunEventType.Name(e.type).removeprefix("RUN_EVENT_TYPE_") for e in seen] == [
                s[1] for s in stored
            ]
            assert seen[-1].type == pb.RUN_EVENT_TYPE_RUN_COMPLETED
        finally:
            fake.close()


def test_input_submitted_on_another_replica_continues_the_session(tmp_path: Path) -> None:
    with fresh_database() as url, cluster(url, tmp_path) as c:
        c.start(2)
        a, b = c.clients
        flow = new_flow(a, with_input())
        waiting = a.sessions.CreateSession(
            ss.CreateSessionRequest(live_flow_id=flow, inputs=struct(topic="tides"), wait=True)
        )
        assert waiting.status == pb.SESSION_STATUS_WAITING_FOR_INPUT
        answered = b.sessions.SubmitUserInput(
            ss.SubmitUserInputRequest(session_id=waiting.id, user_input="why?", wait=True),
            timeout=60,
        )
        assert answered.status == pb.SESSION_STATUS_COMPLETED
        assert answered.artifact["response"] == "Answer about tides: why?"
        assert_gapless(url, waiting.id)


def test_cancel_run_on_another_replica_stops_the_run(tmp_path: Path) -> None:
    fake = GatedOpenAI()
    with fresh_database() as url, cluster(url, tmp_path, _openai_env(fake)) as c:
        try:
            c.start(2)
            a, b = c.clients
            flow = new_flow(a, gated_flow())
            session = a.sessions.CreateSession(ss.CreateSessionRequest(live_flow_id=flow)).id
            wait_until(lambda: fake.entered >= 1, timeout=60)  # in flight on A
            run = _run_of(b, session)
            cancelled = b.runs.CancelFlowRun(fr.CancelFlowRunRequest(id=run.id), timeout=60)
            assert cancelled.status == pb.RUN_STATUS_CANCELLED
            assert b.runs.GetFlowRun(fr.GetFlowRunRequest(id=run.id)).status == (
                pb.RUN_STATUS_CANCELLED
            )
            events = assert_gapless(url, session)
            assert events[-1][1] == "RUN_CANCELLED"
            assert [e[1] for e in events].count("RUN_CANCELLED") == 1
        finally:
            fake.close()


def test_cancel_session_on_another_replica_stops_its_run(tmp_path: Path) -> None:
    fake = GatedOpenAI()
    with fresh_database() as url, cluster(url, tmp_path, _openai_env(fake)) as c:
        try:
            c.start(2)
            a, b = c.clients
            flow = new_flow(a, gated_flow())
            session = a.sessions.CreateSession(ss.CreateSessionRequest(live_flow_id=flow)).id
            wait_until(lambda: fake.entered >= 1, timeout=60)  # in flight on A
            answer = b.sessions.CancelSession(ss.CancelSessionRequest(id=session), timeout=60)
            assert answer.status == pb.SESSION_STATUS_CANCELLED
            assert _run_of(b, session).status == pb.RUN_STATUS_CANCELLED
            events = assert_gapless(url, session)
            assert events[-1][1] == "RUN_CANCELLED"
        finally:
            fake.close()


def _simple_flow() -> tuple[list[pb.Step], list[pb.StepTransition]]:
    return linear(
        step("start", "START"),
        step("say", "LLM", "hello ${inputs.name}"),
        step("end", "END", "${say.result}"),
    )


def test_one_request_id_sent_to_two_replicas_at_once_starts_one_run(tmp_path: Path) -> None:
    with fresh_database() as url, cluster(url, tmp_path) as c:
        c.start(2)
        a, b = c.clients
        flow = new_flow(a, _simple_flow())
        for n in range(8):
            request = fr.RunFlowRequest(
                flow_id=flow, body=struct(name=f"n{n}"), request_id=f"req-{n}"
            )
            barrier = threading.Barrier(2)

            def send(client, request=request, barrier=barrier):  # type: ignore[no-untyped-def]
                barrier.wait()
                return client.runs.RunFlow(request, timeout=60)

            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(send, [a, b]))
            assert answers[0].id == answers[1].id, n
            assert {x.status for x in answers} == {pb.RUN_STATUS_COMPLETE}
            stored = rows(url, "SELECT id FROM flow_runs WHERE request_id = %s", (f"req-{n}",))
            assert stored == [(answers[0].id,)], n
        assert rows(url, "SELECT count(*) FROM sessions")[0][0] == 8


def test_request_id_reused_for_another_request_on_another_replica_is_refused(
    tmp_path: Path,
) -> None:
    with fresh_database() as url, cluster(url, tmp_path) as c:
        c.start(2)
        a, b = c.clients
        flow = new_flow(a, _simple_flow())
        first = a.runs.RunFlow(
            fr.RunFlowRequest(flow_id=flow, body=struct(name="x"), request_id="once"), timeout=60
        )
        with pytest.raises(grpc.RpcError) as caught:
            b.runs.RunFlow(
                fr.RunFlowRequest(flow_id=flow, body=struct(name="y"), request_id="once"),
                timeout=60,
            )
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert rows(url, "SELECT id FROM flow_runs WHERE request_id = 'once'") == [(first.id,)]


CONCURRENT_RUNS = 40
ROUNDS = 3


def _runs_on_one_session_through_two_replicas(
    c: Cluster, flow: str
) -> tuple[str, list[fr.FlowRun]]:
    """A session, then CONCURRENT_RUNS RunFlow calls continuing it at once, half of them
    sent to each replica."""
    a, b = c.clients
    first = a.runs.RunFlow(fr.RunFlowRequest(flow_id=flow, body=struct(name="0")), timeout=60)
    barrier = threading.Barrier(CONCURRENT_RUNS)

    def send(n: int) -> fr.FlowRun:
        barrier.wait()
        return (a, b)[n % 2].runs.RunFlow(
            fr.RunFlowRequest(
                flow_id=flow,
                body=struct(name=str(n + 1)),
                options=pb.RunOptions(session_id=first.session_id),
            ),
            timeout=120,
        )

    with concurrent.futures.ThreadPoolExecutor(CONCURRENT_RUNS) as pool:
        return first.session_id, list(pool.map(send, range(CONCURRENT_RUNS)))


def test_runs_sent_to_one_session_through_two_replicas_all_complete(tmp_path: Path) -> None:
    with fresh_database() as url, cluster(url, tmp_path) as c:
        c.start(2)
        flow = new_flow(c.clients[0], _simple_flow())
        session, answers = _runs_on_one_session_through_two_replicas(c, flow)
        assert [x.status for x in answers] == [pb.RUN_STATUS_COMPLETE] * CONCURRENT_RUNS
        assert [x.response for x in answers] == [f"hello {n + 1}" for n in range(CONCURRENT_RUNS)]
        assert len({x.id for x in answers}) == CONCURRENT_RUNS
        assert_gapless(url, session)
        assert rows(url, "SELECT count(*) FROM flow_runs WHERE session_id = %s", (session,)) == [
            (CONCURRENT_RUNS + 1,)
        ]


def test_runs_sent_to_one_session_through_two_replicas_each_run_once(tmp_path: Path) -> None:
    with fresh_database() as url, cluster(url, tmp_path) as c:
        c.start(2)
        flow = new_flow(c.clients[0], _simple_flow())
        for _ in range(ROUNDS):
            session, _answers = _runs_on_one_session_through_two_replicas(c, flow)
            assert_each_step_once(url, session, steps_per_run=3)


@pytest.mark.parametrize("attempt", range(3))
def test_replicas_started_together_on_an_empty_database_all_serve(
    tmp_path: Path, attempt: int
) -> None:
    with fresh_database() as url, cluster(url, tmp_path) as c:
        servers = c.start(3)  # migrations race on the empty database
        assert [health(s.address) for s in servers] == [SERVING] * 3
        for client in c.clients:  # each one reads and writes the one schema
            flow = new_flow(client, _simple_flow())
            answer = client.runs.RunFlow(
                fr.RunFlowRequest(flow_id=flow, body=struct(name="x")), timeout=60
            )
            assert answer.status == pb.RUN_STATUS_COMPLETE


def _second_server_on(url: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "flowsvc", "serve", "--listen", "127.0.0.1:0"]
    return subprocess.run(
        [*command, "--database-url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_second_server_on_one_sqlite_file_refuses_to_start(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "db.sqlite")
    first = ChildServer(url, tmp_path / "first.log")
    try:
        second = _second_server_on(url)
        assert second.returncode != 0
        assert "SQLite is for one server process" in second.stderr
        assert health(first.address) == SERVING  # the first one goes on serving
    finally:
        first.proc.kill()
        first.wait()


def test_second_server_on_one_sqlite_file_says_why_without_a_traceback(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "db.sqlite")
    first = ChildServer(url, tmp_path / "first.log")
    try:
        second = _second_server_on(url)
        assert second.returncode != 0
        assert "Traceback" not in second.stderr, second.stderr
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith("flowsvc: ") and "SQLite is for one server process" in last, last
    finally:
        first.proc.kill()
        first.wait()


def test_stream_run_flow_on_one_replica_follows_a_run_queued_behind_another(
    tmp_path: Path,
) -> None:
    fake = GatedOpenAI()
    with fresh_database() as url, cluster(url, tmp_path, _openai_env(fake)) as c:
        try:
            c.start(2)
            a, b = c.clients
            flow = new_flow(a, gated_flow())
            session = a.sessions.CreateSession(ss.CreateSessionRequest(live_flow_id=flow)).id
            wait_until(lambda: fake.entered >= 1, timeout=60)  # A holds the session
            stream = b.runs.StreamRunFlow(
                fr.StreamRunFlowRequest(flow_id=flow, options=pb.RunOptions(session_id=session)),
                timeout=120,
            )
            opened = threading.Timer(1.0, fake.gate.set)
            opened.start()
            events = [e for e in stream if e.type != DELTA]
            opened.join()
            assert events[0].type == pb.RUN_EVENT_TYPE_RUN_STARTED
            assert events[-1].type == pb.RUN_EVENT_TYPE_RUN_COMPLETED
            run_id = events[0].run_id
            assert {e.run_id for e in events} == {run_id}
            stored = [s for s in stored_events(url, session) if s[2] == run_id]
            assert [e.seq for e in events] == [s[0] for s in stored]
            assert_each_step_once(url, session, steps_per_run=5)
            assert fake.entered == 2
        finally:
            fake.close()


def test_group_commits_of_new_sessions_under_load_do_not_fail(tmp_path: Path) -> None:
    with fresh_database() as url, cluster(url, tmp_path) as c:
        c.start(2)
        flow = new_flow(c.clients[0], long_chain(120))  # several journals a run

        def create(n: int) -> str:
            client = c.clients[n % 2]
            return str(
                client.sessions.CreateSession(
                    ss.CreateSessionRequest(live_flow_id=flow), timeout=60
                ).id
            )

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            made = list(pool.map(create, range(64)))
        wait_until(
            lambda: all(
                session_status(c.clients[0], s) == pb.SESSION_STATUS_COMPLETED for s in made
            ),
            timeout=120,
        )
        failed = [
            e for n in range(2) for e in c.log_entries(n) if e["msg"].startswith("group commit")
        ]
        assert failed == [], failed[0].get("exception", "")[-600:]
