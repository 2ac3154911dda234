"""Several `flowsvc serve` processes on one PostgreSQL database, for the replica tests.

- Cluster starts replicas as child processes (together, as an orchestrator would), gives
  clients of each, and kills whatever is left of them when it closes.
- GatedOpenAI is the loopback model server with one more model, `gated`, whose answers wait
  until the test opens the gate: a run stays in flight on a replica for as long as the test
  needs, whatever the machine's speed.
- The rest reads the database directly: what the service stored, not what it says.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flowsvc.store.event_codec import STEP_FIELDS
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss
from tests.fake_openai import FakeOpenAI
from tests.graphs import create_request, linear, step
from tests.harness import ChildServer, Client, bearer, connect, iter_lines, mint_key

# Leases of 2 s: a dead replica's sessions are taken over within seconds.
FAST_LEASES = {
    "FLOWSVC_LEASE_SECONDS": "2",
    "FLOWSVC_CLAIM_POLL_SECONDS": "0.5",
    "FLOWSVC_GRACE_SECONDS": "1",
    "FLOWSVC_MODEL_TIMEOUT": "300",
    "FLOWSVC_STEP_TIMEOUT": "600",
}
GATE_TIMEOUT = 240  # a gated answer never waits longer than this, whatever the test does


class GatedOpenAI(FakeOpenAI):
    """FakeOpenAI plus model `gated`: it answers (the last user message, like `stream`)
    only once `gate` is set. `entered` counts the requests that reached the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = 0
        self._count = threading.Lock()
        super().__init__()

    def _chat(self, handler: Any) -> None:
        length = int(handler.headers.get("Content-Length", "0"))
        raw = handler.rfile.read(length)
        if json.loads(raw).get("model") == "gated":
            with self._count:
                self.entered += 1
            self.gate.wait(GATE_TIMEOUT)
            body = json.loads(raw)
            body["model"] = "stream"
            raw = json.dumps(body).encode()
            handler.headers.replace_header("Content-Length", str(len(raw)))
        handler.rfile = io.BytesIO(raw)
        super()._chat(handler)

    def close(self) -> None:
        self.gate.set()
        super().close()


def gated_flow(after: int = 2) -> Any:
    """START -> think (openai/gated) -> `after` instant LLM steps -> END."""
    steps = [
        step("start", "START"),
        step("think", "LLM", "thought", llm=pb.LlmConfig(model="openai/gated")),
    ]
    prev = "think"
    for i in range(after):
        steps.append(step(f"then{i}", "LLM", "${" + prev + ".result}+"))
        prev = f"then{i}"
    steps.append(step("end", "END", "${" + prev + ".result}"))
    return linear(*steps)


class Cluster:
    """Replicas of one deployment: one database, one key, logs in tmp_path."""

    def __init__(self, url: str, tmp_path: Path, env: dict[str, str] | None = None) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self.env = {**FAST_LEASES, **(env or {})}
        self.servers: list[ChildServer] = []
        self.clients: list[Client] = []
        self.key = ""

    def start(self, count: int, env: dict[str, str] | None = None) -> list[ChildServer]:
        """`count` replicas started at once; returns them once each reports serving."""
        first = len(self.servers)
        extra = {**self.env, **(env or {})}

        def one(n: int) -> ChildServer:
            return ChildServer(self.url, self.tmp_path / f"replica{n}.log", extra_env=extra)

        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            futures = [pool.submit(one, first + n) for n in range(count)]
            started = []
            failure: BaseException | None = None
            for future in futures:
                try:
                    started.append(future.result())
                except BaseException as exc:  # keep the others, to kill them
                    failure = failure or exc
        self.servers.extend(started)
        if failure is not None:
            raise failure
        if not self.key:
            self.key = mint_key(self.url, "acme")
        self.clients.extend(connect(s.address, bearer(self.key)) for s in started)
        return started

    def log(self, n: int) -> str:
        return (self.tmp_path / f"replica{n}.log").read_text(errors="replace")

    def log_entries(self, n: int) -> list[dict[str, Any]]:
        return list(iter_lines(self.tmp_path / f"replica{n}.log"))

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for server in self.servers:
            if server.proc.poll() is None:
                server.proc.send_signal(signal.SIGCONT)
                server.signal(signal.SIGTERM)
        for server in self.servers:
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.wait(timeout=20)


@contextmanager
def cluster(url: str, tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[Cluster]:
    c = Cluster(url, tmp_path, env)
    try:
        yield c
    finally:
        c.close()


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return int(
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            .status
        )


SERVING = health_pb2.HealthCheckResponse.SERVING


# -- reading the database --------------------------------------------------------------------


def rows(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def stored_events(url: str, session_id: str) -> list[tuple[int, str, str, dict[str, Any]]]:
    """(seq, type, run_id, payload) of the session's stored events, in seq order."""
    found = rows(
        url,
        "SELECT seq, type, run_id, payload FROM run_events WHERE session_id = %s ORDER BY seq",
        (session_id,),
    )
    return [(r[0], r[1], r[2], r[3] if isinstance(r[3], dict) else json.loads(r[3])) for r in found]


def assert_gapless(url: str, session_id: str) -> list[tuple[int, str, str, dict[str, Any]]]:
    events = stored_events(url, session_id)
    assert [e[0] for e in events] == list(range(1, len(events) + 1)), session_id
    last_seq = rows(url, "SELECT last_seq FROM sessions WHERE id = %s", (session_id,))[0][0]
    assert last_seq == len(events), session_id
    return events


def assert_each_step_once(url: str, session_id: str, steps_per_run: int) -> None:
    """Every run of the session completed once, each of its steps exactly once: one step
    record per step, one STEP_COMPLETED per step, one RUN_STARTED and one RUN_COMPLETED."""
    events = assert_gapless(url, session_id)
    runs = rows(url, "SELECT id, status FROM flow_runs WHERE session_id = %s", (session_id,))
    assert runs, session_id
    for run_id, status in runs:
        assert status == "COMPLETE", (session_id, run_id, status)
        mine = [e for e in events if e[2] == run_id]
        kinds = Counter(e[1] for e in mine)
        assert kinds["RUN_STARTED"] == 1, (run_id, kinds)
        assert kinds["RUN_COMPLETED"] == 1, (run_id, kinds)
        assert kinds["RUN_FAILED"] == kinds["RUN_CANCELLED"] == 0, (run_id, kinds)
        completed = Counter(
            e[3]["s"][STEP_FIELDS.index("step")] for e in mine if e[1] == "STEP_COMPLETED"
        )
        assert len(completed) == steps_per_run, (run_id, completed)
        assert set(completed.values()) == {1}, (run_id, completed)
        assert mine[-1][1] == "RUN_COMPLETED", (run_id, [e[1] for e in mine])
        records = rows(
            url, "SELECT step_id, status FROM session_steps WHERE run_id = %s", (run_id,)
        )
        assert len(records) == steps_per_run, (run_id, records)
        assert len({r[0] for r in records}) == steps_per_run, (run_id, records)
        assert {r[1] for r in records} == {"COMPLETED"}, (run_id, records)


def active_runs(url: str) -> list[tuple[str, str]]:
    return [
        (r[0], r[1])
        for r in rows(url, "SELECT id, status FROM flow_runs WHERE status IN ('QUEUED', 'RUNNING')")
    ]


def session_status(client: Client, session_id: str) -> int:
    return int(client.sessions.GetSession(ss.GetSessionRequest(id=session_id)).status)


def new_flow(client: Client, graph: Any) -> str:
    return str(client.flows.CreateLiveFlow(create_request(graph=graph)).id)
