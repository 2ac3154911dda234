"""Replicas that die, stop or freeze: the others take their sessions over, and a replica
that lost a lease writes nothing more to that session."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import psycopg
import pytest

from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss
from tests.graphs import long_chain
from tests.harness import ChildServer, Client, wait_until
from tests.postgres import fresh_database
from tests.replicas import (
    Cluster,
    GatedOpenAI,
    active_runs,
    assert_each_step_once,
    cluster,
    gated_flow,
    new_flow,
    rows,
    session_status,
    stored_events,
)

COMPLETED = pb.SESSION_STATUS_COMPLETED
CHAIN = 120
THREADS = 16
KILL_AFTER_ACKS = 24


def _openai_env(fake: GatedOpenAI) -> dict[str, str]:
    return {"FLOWSVC_OPENAI_BASE_URL": f"{fake.url}/v1", "FLOWSVC_OPENAI_API_KEY": "x"}


def test_kill_9_of_one_of_three_replicas_under_load_loses_nothing(tmp_path: Path) -> None:
    fake = GatedOpenAI()
    with fresh_database() as url, cluster(url, tmp_path, _openai_env(fake)) as c:
        try:
            servers = c.start(3)
            victim = servers[0]
            flow = new_flow(c.clients[0], long_chain(CHAIN))
            # One run surely in flight on the victim at the kill: its model call is gated.
            slow_flow = new_flow(c.clients[0], gated_flow())
            slow = (
                c.clients[0]
                .sessions.CreateSession(ss.CreateSessionRequest(live_flow_id=slow_flow))
                .id
            )
            wait_until(lambda: fake.entered >= 1, timeout=60)

            lock = threading.Lock()
            acked: list[str] = []  # sessions a replica acknowledged
            acked_runs: list[str] = []  # runs a replica answered as finished
            errors: Counter[grpc.StatusCode] = Counter()
            stop = threading.Event()
            killed = threading.Event()

            def kill() -> None:
                victim.signal(signal.SIGKILL)
                killed.set()

            def load(worker: int) -> None:
                rng = random.Random(worker)
                n = 0
                while not stop.is_set():
                    n += 1
                    client = c.clients[(worker + n) % 3]
                    try:
                        with lock:
                            known = list(acked)
                        if n % 3 == 0 and known:
                            run = client.runs.RunFlow(
                                fr.RunFlowRequest(
                                    flow_id=flow,
                                    options=pb.RunOptions(session_id=rng.choice(known)),
                                ),
                                timeout=120,
                            )
                            with lock:
                                acked_runs.append(run.id)
                        else:
                            made = client.sessions.CreateSession(
                                ss.CreateSessionRequest(live_flow_id=flow), timeout=120
                            )
                            with lock:
                                acked.append(made.id)
                                if len(acked) == KILL_AFTER_ACKS:
                                    kill()
                    except grpc.RpcError as exc:
                        with lock:
                            errors[exc.code()] += 1
                        time.sleep(0.05)

            workers = [threading.Thread(target=load, args=(w,)) for w in range(THREADS)]
            for w in workers:
                w.start()
            try:
                assert killed.wait(180), "the load never reached the kill"
                victim.wait(timeout=30)
                time.sleep(3)  # the survivors keep serving load while they take over
            finally:
                stop.set()
                for w in workers:
                    w.join(timeout=300)
            fake.gate.set()  # the victim's gated run goes on where it is taken over

            survivor = c.clients[1]
            wait_until(lambda: not active_runs(url), timeout=240)
            everything = [*acked, slow]
            assert [s for s in everything if session_status(survivor, s) != COMPLETED] == []
            assert set(errors) <= {grpc.StatusCode.UNAVAILABLE}, errors
            for session in acked:
                assert_each_step_once(url, session, steps_per_run=CHAIN + 2)
            assert_each_step_once(url, slow, steps_per_run=5)
            assert fake.entered >= 2, "the gated step was not taken over mid-flight"
            statuses = rows(
                url,
                "SELECT status, count(*) FROM flow_runs WHERE id = ANY(%s) GROUP BY status",
                (acked_runs,),
            )
            assert statuses in ([], [("COMPLETE", len(acked_runs))]), statuses
            assert rows(
                url, "SELECT count(*) FROM sessions WHERE status IN ('NEW', 'RUNNING')"
            ) == [(0,)]
        finally:
            fake.close()


def _two_replicas_and_a_run_in_a_model_call_on_the_first(
    c: Cluster, fake: GatedOpenAI, after: int = 2
) -> tuple[ChildServer, Client, str]:
    """Replicas A and B; a session created on A, its run waiting in A's gated model call.
    Returns A's process, B's client and the session."""
    a_server, _ = c.start(2)
    a, b = c.clients
    flow = new_flow(a, gated_flow(after=after))
    session = a.sessions.CreateSession(ss.CreateSessionRequest(live_flow_id=flow)).id
    wait_until(lambda: fake.entered >= 1, timeout=60)
    return a_server, b, str(session)


def _events_and_steps(url: str, session: str) -> tuple[list[object], list[object]]:
    return (
        stored_events(url, session),  # type: ignore[list-item]
        rows(
            url,
            "SELECT id, status, result, updated_at FROM session_steps WHERE session_id = %s "
            "ORDER BY position",
            (session,),
        ),
    )


def test_frozen_replica_that_lost_its_lease_writes_nothing_when_it_wakes(tmp_path: Path) -> None:
    fake = GatedOpenAI()
    with fresh_database() as url, cluster(url, tmp_path, _openai_env(fake)) as c:
        try:
            a_server, b, session = _two_replicas_and_a_run_in_a_model_call_on_the_first(
                c, fake, after=3
            )
            a_server.signal(signal.SIGSTOP)
            # Past A's lease (2 s), B claims the session and redoes the step in flight.
            wait_until(lambda: fake.entered >= 2, timeout=60)
            fake.gate.set()  # both calls answer; A's waits in its socket while A is frozen
            wait_until(lambda: session_status(b, session) == COMPLETED, timeout=60)
            before = _events_and_steps(url, session)
            a_server.signal(signal.SIGCONT)
            # A wakes with its model answer and goes on: its writes are refused.
            wait_until(lambda: "run abandoned" in c.log(0), timeout=60)
            time.sleep(2)  # anything A still wrote would be committed by now
            assert _events_and_steps(url, session) == before
            assert_each_step_once(url, session, steps_per_run=6)
            assert b.sessions.GetSession(ss.GetSessionRequest(id=session)).artifact["response"] == (
                "thought+++"
            )
        finally:
            fake.close()


# Where replica A's commit is held up, after it has locked the session's row: what the test
# holds to stop it there, and how A's waiting statement begins.
HOLD_UPS = {
    "updating its run": (
        "SELECT 1 FROM flow_runs WHERE session_id = %s FOR UPDATE",
        "UPDATE flow_runs",
    ),
    # Then, its COPY begun, the database waits on A for the rows, in the middle of a statement:
    # no idle-transaction limit applies; the other replicas end it.
    "copying its events in": ("LOCK TABLE run_events IN SHARE MODE", "COPY run_events"),
}


@pytest.mark.parametrize("held_up", HOLD_UPS)
def test_replica_frozen_inside_a_commit_does_not_hold_its_session_from_the_others(
    tmp_path: Path, held_up: str
) -> None:
    # Frozen (stopped, paused VM, cut off) between a statement and its COMMIT, a replica holds
    # the row locks it took; the database ends a transaction idle past half a lease, so the
    # others can take the session once the lease runs out, not once the replica wakes.
    hold, statement = HOLD_UPS[held_up]
    fake = GatedOpenAI()
    with fresh_database() as url, cluster(url, tmp_path, _openai_env(fake)) as c:
        try:
            a_server, b, session = _two_replicas_and_a_run_in_a_model_call_on_the_first(c, fake)
            with psycopg.connect(url) as blocker:
                blocker.execute(hold, (session,) if "%s" in hold else ())
                fake.gate.set()  # A's next commit takes the session's row, then waits on hold
                wait_until(lambda: _waiting_on_a_lock(url, statement), timeout=60)
                a_server.signal(signal.SIGSTOP)
            # A's transaction waits for a frozen A: for the rest of its COPY, or its COMMIT.
            wait_until(lambda: session_status(b, session) == COMPLETED, timeout=60)
            a_server.signal(signal.SIGCONT)
            assert_each_step_once(url, session, steps_per_run=5)
        finally:
            fake.close()


def _waiting_on_a_lock(url: str, statement: str) -> bool:
    return bool(
        rows(
            url,
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND starts_with(query, %s)",
            (statement,),
        )
    )


def test_sigterm_hands_sessions_over_without_waiting_for_the_lease(tmp_path: Path) -> None:
    fake = GatedOpenAI()
    # Leases of a minute: a takeover well within it is the release, not the expiry.
    env = {**_openai_env(fake), "FLOWSVC_LEASE_SECONDS": "60"}
    with fresh_database() as url, cluster(url, tmp_path, env) as c:
        try:
            a_server, b, session = _two_replicas_and_a_run_in_a_model_call_on_the_first(c, fake)
            a_server.signal(signal.SIGTERM)
            assert a_server.wait(timeout=30) == 0
            wait_until(lambda: fake.entered >= 2, timeout=30)  # B redoes the step
            fake.gate.set()
            wait_until(lambda: session_status(b, session) == COMPLETED, timeout=30)
            assert_each_step_once(url, session, steps_per_run=5)
        finally:
            fake.close()
