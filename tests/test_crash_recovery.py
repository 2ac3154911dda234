"""SIGKILL mid-run: the next start resumes every interrupted run from its last committed
step, and every acknowledged session completes with a gapless event sequence."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
from pathlib import Path

import grpc

from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss
from tests.fake_openai import FakeOpenAI
from tests.graphs import create_request, linear, long_chain, step, struct
from tests.harness import (
    ChildServer,
    bearer,
    connect,
    iter_lines,
    mint_key,
    sqlite_url,
    wait_until,
)

CHAIN = 450
SESSIONS = 64
KILL_AFTER_ACKS = 4


def _events(client, session_id: str, until_seq: int) -> list[pb.RunEvent]:  # type: ignore[no-untyped-def]
    out = []
    stream = client.sessions.WatchSession(ss.WatchSessionRequest(session_id=session_id))
    for e in stream:
        if e.type == pb.RUN_EVENT_TYPE_STEP_DELTA:
            continue
        out.append(e)
        if e.seq >= until_seq or e.type == pb.RUN_EVENT_TYPE_RUN_COMPLETED:
            stream.cancel()
            break
    return out


def test_killed_server_resumes_every_acknowledged_run(tmp_path: Path) -> None:
    fake = FakeOpenAI()
    env = {"FLOWSVC_OPENAI_BASE_URL": f"{fake.url}/v1"}
    url = sqlite_url(tmp_path / "db.sqlite")
    key = mint_key(url, "acme")
    first = ChildServer(url, tmp_path / "first.log", extra_env=env)
    c = connect(first.address, bearer(key))
    flow = c.flows.CreateLiveFlow(create_request(graph=long_chain(CHAIN)))
    # One run is surely mid-flight at the kill: its model call takes 5 s.
    slow = c.flows.CreateLiveFlow(
        create_request(
            graph=linear(
                step("start", "START"),
                step("think", "LLM", "slowly", llm=pb.LlmConfig(model="openai/slow")),
                step("end", "END", "${think.result}"),
            )
        )
    )
    slow_session = c.sessions.CreateSession(ss.CreateSessionRequest(live_flow_id=slow.id)).id
    wait_until(lambda: fake.attempts["slow"] > 0, timeout=30)
    acknowledged: list[str] = []
    lock = threading.Lock()

    def create(_: int) -> None:
        try:
            session = c.sessions.CreateSession(ss.CreateSessionRequest(live_flow_id=flow.id))
        except grpc.RpcError:
            return  # not acknowledged: the server died first
        with lock:
            acknowledged.append(session.id)
            if len(acknowledged) == KILL_AFTER_ACKS:
                first.signal(signal.SIGKILL)

    with concurrent.futures.ThreadPoolExecutor(SESSIONS) as pool:
        list(pool.map(create, range(SESSIONS)))
    first.wait()
    c.close()
    assert len(acknowledged) >= KILL_AFTER_ACKS

    second = ChildServer(url, tmp_path / "second.log", extra_env=env)
    try:
        c = connect(second.address, bearer(key))
        wait_until(
            lambda: (
                c.sessions.GetSession(ss.GetSessionRequest(id=slow_session)).status
                == pb.SESSION_STATUS_COMPLETED
            ),
            timeout=60,
        )
        slow_steps = c.sessions.GetSession(ss.GetSessionRequest(id=slow_session)).steps
        assert [(s.step.name, s.status) for s in slow_steps] == [
            ("start", pb.STEP_STATUS_COMPLETED),
            ("think", pb.STEP_STATUS_COMPLETED),
            ("end", pb.STEP_STATUS_COMPLETED),
        ]
        assert slow_steps[1].result == "slowly"

        def all_done() -> bool:
            return all(
                c.sessions.GetSession(ss.GetSessionRequest(id=s)).status
                == pb.SESSION_STATUS_COMPLETED
                for s in acknowledged
            )

        wait_until(all_done, timeout=120)
        expected_names = ["start"] + [f"s{i}" for i in range(CHAIN)] + ["end"]
        for session_id in acknowledged:
            session = c.sessions.GetSession(ss.GetSessionRequest(id=session_id))
            # Each step ran to completion exactly once: none repeated, none skipped.
            assert [s.step.name for s in session.steps] == expected_names
            assert all(s.status == pb.STEP_STATUS_COMPLETED for s in session.steps)
            assert session.artifact["response"] == "go" + "." * (CHAIN - 1)
            events = _events(c, session_id, 10_000)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            kinds = [e.type for e in events]
            assert kinds.count(pb.RUN_EVENT_TYPE_RUN_STARTED) == 1
            assert kinds[-1] == pb.RUN_EVENT_TYPE_RUN_COMPLETED
            completed = [
                e.step.step.name for e in events if e.type == pb.RUN_EVENT_TYPE_STEP_COMPLETED
            ]
            assert completed == expected_names
        c.close()
    finally:
        second.signal(signal.SIGTERM)
        assert second.wait() == 0
        fake.close()
    resumed = [
        line for line in (tmp_path / "second.log").read_text().splitlines() if "resumed" in line
    ]
    assert resumed, "the second start resumed nothing: the kill came too late to test recovery"


def test_graceful_restart_mid_run_also_resumes(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "db.sqlite")
    key = mint_key(url, "acme")
    first = ChildServer(url, tmp_path / "first.log", extra_env={"FLOWSVC_GRACE_SECONDS": "0"})
    c = connect(first.address, bearer(key))
    flow = c.flows.CreateLiveFlow(create_request(graph=long_chain(CHAIN)))
    ids = [
        c.sessions.CreateSession(ss.CreateSessionRequest(live_flow_id=flow.id)).id for _ in range(4)
    ]
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    c.close()
    second = ChildServer(url, tmp_path / "second.log")
    try:
        c = connect(second.address, bearer(key))
        wait_until(
            lambda: all(
                c.sessions.GetSession(ss.GetSessionRequest(id=s)).status
                == pb.SESSION_STATUS_COMPLETED
                for s in ids
            ),
            timeout=120,
        )
        for s in ids:
            assert c.sessions.GetSession(ss.GetSessionRequest(id=s)).steps_count == CHAIN + 2
        c.close()
    finally:
        second.signal(signal.SIGTERM)
        second.wait()


def writer_processes_of(pid: int) -> list[int]:
    """The server's live children that multiprocessing spawned (its writer process; not
    multiprocessing's resource tracker, which ends with its pipe)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not alive(int(entry.name)):
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def test_a_killed_server_takes_its_writer_process_with_it(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "db.sqlite")
    key = mint_key(url, "acme")
    server = ChildServer(
        url, tmp_path / "server.log", extra_env={"FLOWSVC_SQLITE_WRITER_PROCESS_FROM": "1"}
    )
    try:
        c = connect(server.address, bearer(key))
        flow = c.flows.CreateLiveFlow(create_request())

        def a_run() -> None:
            c.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="q")))

        a_run()  # its commit starts the writer process
        wait_until(lambda: any(e.get("msg") == "SQLite writer process ready"
                               for e in iter_lines(server.log_path)))
        a_run()
        [writer] = writer_processes_of(server.proc.pid)
        c.close()
        # Stopped, it would never read the end of its socket: only PR_SET_PDEATHSIG ends it.
        os.kill(writer, signal.SIGSTOP)
    finally:
        server.signal(signal.SIGKILL)
        server.wait()
    wait_until(lambda: not alive(writer), timeout=10)
