"""The store contract, one suite every backend passes (SQLite and PostgreSQL).

It calls the stores directly, as the engine does through its ports: journals and their
atomicity, seqs allocated by the database, events after a seq, paging, cascading deletes,
request ids, leases and fencing, wake-ups only after commit, queued runs and claims. Two
"replicas" are two sets of stores with their own owner ids on one database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from flowsvc.domain.errors import LeaseLost, RequestIdTaken
from flowsvc.domain.flows import FlowCatalog
from flowsvc.domain.ids import new_id, now
from flowsvc.domain.limits import Limits
from flowsvc.domain.model import FlowVersion, Step, StepType, Transition
from flowsvc.domain.paging import Page
from flowsvc.domain.runs import (
    EventType,
    FlowRun,
    Journal,
    Message,
    RunEvent,
    RunStatus,
    Session,
    SessionStatus,
    SessionStep,
    StepStatus,
)
from flowsvc.store.database import Database
from flowsvc.store.journal_writer import JournalWriter
from flowsvc.store.lease_store import SqlLeases
from flowsvc.store.run_store import SqlRunStore
from flowsvc.store.sql_store import SqlStore
from flowsvc.store.writer_process import WriterProcess
from tests import postgres
from tests.harness import sqlite_url

ORG = "acme"
LEASE = 0.4  # seconds: short, so expiry is observable in a test


@dataclass
class Replica:
    """One replica's stores on the shared database."""

    db: Database
    flows: SqlStore
    writer: JournalWriter
    runs: SqlRunStore
    leases: SqlLeases
    committed: list[set[str]]

    @property
    def owner(self) -> str:
        return self.leases.owner_id


# A SQLite URL ending so has its replicas' journals committed by a writer process each (the
# same suite, through writer_process.py: with process_from=1, every batch once it answers).
BY_PROCESS = "#writer-process"


@asynccontextmanager
async def replica(url: str) -> AsyncIterator[Replica]:
    by_process = url.endswith(BY_PROCESS)
    url = url.removesuffix(BY_PROCESS)
    db = Database(url)
    await db.migrate()
    owner = new_id()
    flows = SqlStore(db)
    process = WriterProcess(url, "NORMAL", LEASE) if by_process else None
    if process is not None:
        await process.started()
    writer = JournalWriter(db, owner, LEASE, process=process, process_from=1)
    committed: list[set[str]] = []
    writer.on_committed.append(lambda ids: committed.append(set(ids)))
    r = Replica(
        db, flows, writer, SqlRunStore(db, flows, writer), SqlLeases(db, owner, LEASE), committed
    )
    writer.start()
    try:
        yield r
    finally:
        await writer.close()
        r.leases.close()
        await db.close()


@pytest.fixture(params=["sqlite", "sqlite-writer-process", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "contract.db")
        return
    if request.param == "sqlite-writer-process":
        yield sqlite_url(tmp_path / "contract.db") + BY_PROCESS
        return
    with postgres.fresh_database() as url:
        yield "postgresql+psycopg://" + url.split("://", 1)[1]


def run_on(url: str, body: Callable[[Replica, Replica], Awaitable[None]]) -> None:
    async def main() -> None:
        async with replica(url) as a, replica(url) as b:
            await body(a, b)

    asyncio.run(main())


# -- building records ------------------------------------------------------------------------


async def a_version(r: Replica) -> FlowVersion:
    catalog = FlowCatalog(r.flows, Limits())
    steps = [
        Step(id="", name="start", step_type=StepType.START),
        Step(id="", name="end", step_type=StepType.END),
    ]
    flow = await catalog.create_flow(
        ORG,
        "flow",
        "",
        steps,
        [Transition(id="", source_step_id="", target_step_id="", source="start", target="end")],
    )
    assert flow.current_version is not None
    return flow.current_version


def a_session(version: FlowVersion) -> Session:
    stamp = now()
    return Session(
        id=new_id(),
        organisation_id=ORG,
        live_flow_id=version.flow_id,
        flow_version_id=version.id,
        version=version.version,
        name="",
        status=SessionStatus.NEW,
        inputs={},
        variables={},
        messages=[],
        customer=None,
        expiration_seconds=3600,
        expires_at=stamp + timedelta(hours=1),
        created_at=stamp,
        updated_at=stamp,
    )


def a_run(session: Session, request_id: str = "", status: RunStatus = RunStatus.RUNNING) -> FlowRun:
    stamp = now()
    return FlowRun(
        id=new_id(),
        organisation_id=ORG,
        flow_id=session.live_flow_id,
        session_id=session.id,
        flow_version_id=session.flow_version_id,
        version=session.version,
        body={},
        override={},
        status=status,
        created_at=stamp,
        updated_at=stamp,
        request_id=request_id,
    )


def a_step(run: FlowRun, version: FlowVersion, position: int) -> SessionStep:
    stamp = now()
    return SessionStep(
        id=new_id(),
        session_id=run.session_id,
        run_id=run.id,
        organisation_id=ORG,
        position=position,
        flow_version_id=version.id,
        step=version.graph.steps[0],
        status=StepStatus.COMPLETED,
        created_at=stamp,
        updated_at=stamp,
    )


def an_event(run: FlowRun, kind: EventType = EventType.STEP_COMPLETED) -> RunEvent:
    return RunEvent(
        seq=0, session_id=run.session_id, run_id=run.id, organisation_id=ORG, type=kind, time=now()
    )


def opening(session: Session, run: FlowRun, *kinds: EventType) -> Journal:
    """The journal that stores a new session with its run and events of these kinds."""
    return Journal(
        session=session,
        session_is_new=True,
        epoch=1,
        new_runs=[run],
        events=[an_event(run, kind) for kind in kinds],
    )


async def new_session_with_run(r: Replica, version: FlowVersion) -> tuple[Session, FlowRun]:
    session = a_session(version)
    run = a_run(session)
    await r.runs.record(
        Journal(
            session=session,
            session_is_new=True,
            epoch=1,
            new_runs=[run],
            events=[an_event(run, EventType.RUN_STARTED)],
        )
    )
    return session, run


def messages_of(session: Session, run: FlowRun | None, *contents: str) -> list[Message]:
    """Messages appended to the session's conversation, as the engine appends them: positions
    after its count, the run that adds them, the session's count moved on."""
    added = []
    for n, content in enumerate(contents):
        session.message_count += 1
        added.append(
            Message(
                id=new_id(),
                date=now(),
                role="user" if n % 2 == 0 else "assistant",
                content=content,
                run_id="" if run is None else run.id,
                position=session.message_count,
            )
        )
    return added


async def session_with_a_turn(
    r: Replica, version: FlowVersion
) -> tuple[Session, FlowRun, list[Message]]:
    """A session whose run added a question and its answer to the conversation."""
    session, run = await new_session_with_run(r, version)
    turn = messages_of(session, run, "question", "answer")
    await r.runs.record(Journal(session=session, epoch=1, runs=[run], new_messages=turn))
    return session, run, turn


async def seqs(r: Replica, session_id: str, run_id: str = "") -> list[int]:
    return [e.seq for e in await r.runs.events_after(session_id, 0, run_id, 10_000)]


# -- journals --------------------------------------------------------------------------------


def test_a_journal_commits_its_session_run_steps_and_events_together(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session = a_session(version)
        run = a_run(session)
        await a.runs.record(
            Journal(
                session=session,
                session_is_new=True,
                epoch=1,
                new_runs=[run],
                new_steps=[a_step(run, version, 1)],
                events=[an_event(run), an_event(run)],
            )
        )
        assert await b.runs.get_session(ORG, session.id) is not None
        assert (await b.runs.get_run(ORG, run.id)) is not None
        assert len(await b.runs.run_steps(run.id)) == 1
        assert await seqs(b, session.id) == [1, 2]

    run_on(database_url, body)


def test_a_commit_whose_listener_fails_is_not_written_again(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        def failing(_: set[str]) -> None:
            raise RuntimeError("a listener's own failure")

        a.writer.on_committed.append(failing)
        version = await a_version(a)
        session = a_session(version)
        run = a_run(session)
        await a.runs.record(opening(session, run, EventType.RUN_STARTED, EventType.STEP_COMPLETED))
        assert await seqs(b, session.id) == [1, 2]  # once, not again journal by journal

    run_on(database_url, body)


def test_a_forked_session_keeps_its_origin_and_lists_its_runs_oldest_first(
    database_url: str,
) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session = a_session(version)
        session.parent_session_id, session.forked_from_step_id = new_id(), new_id()
        runs = [a_run(session), a_run(session)]
        await a.runs.record(
            Journal(session=session, session_is_new=True, epoch=1, new_runs=runs)
        )
        await new_session_with_run(a, version)  # another session's run is not listed
        found = await b.runs.get_session(ORG, session.id)
        assert found is not None
        assert (found.parent_session_id, found.forked_from_step_id) == (
            session.parent_session_id,
            session.forked_from_step_id,
        )
        assert [r.id for r in await b.runs.session_runs(ORG, session.id)] == [r.id for r in runs]
        assert await b.runs.session_runs("another-org", session.id) == []

    run_on(database_url, body)


def test_a_refused_journal_leaves_nothing_behind(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session, run = await new_session_with_run(a, version)
        step = a_step(run, version, 1)
        stale = a.runs.record(
            Journal(session=session, epoch=99, runs=[run], new_steps=[step], events=[an_event(run)])
        )
        with pytest.raises(LeaseLost):
            await stale
        assert await b.runs.run_steps(run.id) == []
        assert await seqs(b, session.id) == [1]

    run_on(database_url, body)


def test_seqs_come_from_the_database_gapless_across_writers(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session, run = await new_session_with_run(a, version)
        # Events need no lease: two writers append to one session at once.
        pending = [
            (a if n % 2 else b).runs.record(Journal(events=[an_event(run), an_event(run)]))
            for n in range(40)
        ]
        await asyncio.gather(*pending)
        assert await seqs(a, session.id) == list(range(1, 82))

    run_on(database_url, body)


def test_recorded_events_get_their_seqs_before_the_commit_is_reported(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        _, run = await new_session_with_run(a, version)
        events = [an_event(run) for _ in range(3)]
        await a.runs.record(Journal(events=events))
        assert [e.seq for e in events] == [2, 3, 4]

    run_on(database_url, body)


def test_wake_ups_name_the_sessions_only_after_their_commit(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        reader = b.db.sync_engine()
        visible_at_wake_up: list[int] = []

        def check(ids: set[str]) -> None:
            # Another connection reads what the wake-up names, at the moment it is given.
            with reader.connect() as conn:
                marks = ", ".join(f"'{i}'" for i in ids)
                count = conn.exec_driver_sql(
                    f"SELECT count(*) FROM sessions WHERE id IN ({marks})"
                ).scalar_one()
            visible_at_wake_up.append(int(count))

        a.writer.on_committed.append(check)
        session, _ = await new_session_with_run(a, version)
        reader.dispose()
        assert session.id in a.committed[-1]
        assert visible_at_wake_up == [1]

    run_on(database_url, body)


def test_events_after_a_seq_come_in_order_filtered_and_limited(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session, first = await new_session_with_run(a, version)
        second = a_run(session, status=RunStatus.QUEUED)
        await a.runs.record(Journal(new_runs=[second]))
        await a.runs.record(Journal(events=[an_event(first), an_event(second), an_event(first)]))
        assert [e.seq for e in await b.runs.events_after(session.id, 1, "", 10)] == [2, 3, 4]
        assert [e.seq for e in await b.runs.events_after(session.id, 1, first.id, 10)] == [2, 4]
        assert [e.seq for e in await b.runs.events_after(session.id, 0, "", 2)] == [1, 2]

    run_on(database_url, body)


def test_sessions_list_newest_first_in_pages(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        made = []
        for _ in range(5):
            session, _ = await new_session_with_run(a, version)
            made.append(session.id)
        page = await b.runs.list_sessions(ORG, "", "", Page(2, None))
        assert [s.id for s in page][:2] == list(reversed(made))[:2]
        assert len(page) == 3  # one more than asked: more exist

    run_on(database_url, body)


def test_deleting_a_session_deletes_its_runs_steps_events_and_messages(
    database_url: str,
) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session, run, _ = await session_with_a_turn(a, version)
        await a.runs.record(
            Journal(session=session, epoch=1, runs=[run], new_steps=[a_step(run, version, 1)])
        )
        assert len(await a.runs.session_messages(session.id)) == 2
        assert await b.runs.delete_session(ORG, session.id)
        assert await a.runs.get_run(ORG, run.id) is None
        assert await a.runs.run_steps(run.id) == []
        assert await seqs(a, session.id) == []
        assert await a.runs.session_messages(session.id) == []

    run_on(database_url, body)


def test_the_last_step_is_read_from_the_end_with_a_status_or_without_some(
    database_url: str,
) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session, run = await new_session_with_run(a, version)
        made = [a_step(run, version, n) for n in range(1, 5)]
        made[1].status = StepStatus.WAITING_FOR_INPUT
        await a.runs.record(Journal(session=session, epoch=1, runs=[run], new_steps=made))
        last = await b.runs.last_step(session.id)
        assert last is not None and last.id == made[3].id
        waiting = await b.runs.last_step(session.id, StepStatus.WAITING_FOR_INPUT.value)
        assert waiting is not None and waiting.id == made[1].id
        kept = await b.runs.last_step(session.id, excluding={made[3].id, made[2].id})
        assert kept is not None and kept.id == made[1].id
        assert await b.runs.last_step(session.id, StepStatus.FAILED.value) is None
        assert await b.runs.last_step(session.id, excluding={m.id for m in made}) is None

    run_on(database_url, body)


def test_a_request_id_makes_one_run_and_a_second_insert_is_told(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session, _ = await new_session_with_run(a, version)
        first = a_run(session, request_id="r-1", status=RunStatus.QUEUED)
        assert await a.leases.insert_queued_run(first, only_if_idle=False)
        with pytest.raises(RequestIdTaken):
            await b.leases.insert_queued_run(
                a_run(session, request_id="r-1", status=RunStatus.QUEUED), only_if_idle=False
            )
        found = await b.runs.run_by_request(ORG, "r-1")
        assert found is not None and found.id == first.id

    run_on(database_url, body)


# -- leases ----------------------------------------------------------------------------------


def test_a_new_session_is_leased_to_its_writer_and_others_cannot_claim_it(
    database_url: str,
) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session, _ = await new_session_with_run(a, version)
        claim = await b.leases.claim_session(ORG, session.id)
        assert claim.session is not None and claim.epoch == 0

    run_on(database_url, body)


def test_an_expired_lease_is_claimed_with_a_higher_epoch_and_fences_the_old_holder(
    database_url: str,
) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session, run = await new_session_with_run(a, version)
        await asyncio.sleep(LEASE * 2.5)
        claim = await b.leases.claim_session(ORG, session.id)
        assert claim.epoch == 2
        with pytest.raises(LeaseLost):
            await a.runs.record(Journal(session=session, epoch=1, runs=[run]))
        claimed = claim.session
        assert claimed is not None
        claimed.name = "taken over"
        await b.runs.record(Journal(session=claimed, epoch=2))
        stored = await a.runs.get_session(ORG, session.id)
        assert stored is not None and stored.name == "taken over"

    run_on(database_url, body)


def test_renewal_keeps_a_lease_past_its_first_expiry(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session, _ = await new_session_with_run(a, version)
        for _ in range(5):
            await asyncio.sleep(LEASE / 2)
            assert a.leases.renew([session.id]) == {session.id}
        assert (await b.leases.claim_session(ORG, session.id)).epoch == 0

    run_on(database_url, body)


def test_renewal_reports_a_lease_another_replica_took(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session, _ = await new_session_with_run(a, version)
        await asyncio.sleep(LEASE * 2.5)
        assert (await b.leases.claim_session(ORG, session.id)).epoch == 2
        assert a.leases.renew([session.id]) == set()

    run_on(database_url, body)


def test_a_released_lease_is_free_at_once_and_queued_runs_are_reported(
    database_url: str,
) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session, run = await new_session_with_run(a, version)
        queued = a_run(session, status=RunStatus.QUEUED)
        assert await b.leases.insert_queued_run(queued, only_if_idle=False)
        requeued: list[list[str]] = []
        a.writer.on_requeue = requeued.append
        await a.runs.record(Journal(session=session, epoch=1, release=True))
        assert requeued == [[session.id]]
        assert (ORG, session.id) in await b.leases.claimable(10)
        claim = await b.leases.claim_session(ORG, session.id)
        assert claim.epoch == 2
        assert [r.id for r in await b.leases.active_runs(session.id)] == [run.id, queued.id]

    run_on(database_url, body)


async def owners(r: Replica, *session_ids: str) -> list[str | None]:
    async with r.db.read() as conn:
        rows = await conn.execute(text("SELECT id, owner_id FROM sessions"))
        found = {row.id: row.owner_id for row in rows}
    return [found[sid] for sid in session_ids]


def test_releases_sharing_a_commit_free_only_the_leases_their_givers_still_hold(
    database_url: str,
) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        kept, _ = await new_session_with_run(a, version)
        taken, _ = await new_session_with_run(a, version)
        await asyncio.sleep(LEASE * 2.5)
        assert (await b.leases.claim_session(ORG, taken.id)).epoch == 2
        await asyncio.gather(
            a.runs.record(Journal(session=kept, epoch=1, release=True)),
            a.runs.record(Journal(session=taken, epoch=1, release=True)),
        )
        assert await owners(b, kept.id, taken.id) == [None, b.owner]

    run_on(database_url, body)


def test_two_releases_of_one_session_in_a_commit_free_it_at_its_latest_epoch(
    database_url: str,
) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session, _ = await new_session_with_run(a, version)
        again = await a.leases.claim_session(ORG, session.id)
        assert again.epoch == 2
        await asyncio.gather(
            a.runs.record(Journal(session=session, epoch=1, release=True)),
            a.runs.record(Journal(session=session, epoch=2, release=True)),
        )
        assert await owners(b, session.id) == [None]

    run_on(database_url, body)


def test_only_if_idle_refuses_a_session_with_a_run_going(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session, _ = await new_session_with_run(a, version)
        assert not await b.leases.insert_queued_run(
            a_run(session, status=RunStatus.QUEUED), only_if_idle=True
        )
        idle = a_session(version)
        await a.runs.record(Journal(session=idle, session_is_new=True, epoch=1))
        assert await b.leases.insert_queued_run(
            a_run(idle, status=RunStatus.QUEUED), only_if_idle=True
        )

    run_on(database_url, body)


def test_a_cancel_request_is_seen_by_every_replica(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        _, run = await new_session_with_run(a, version)
        assert await b.leases.request_cancel(ORG, run.id)
        assert run.id in await a.leases.cancel_requests()
        fresh = await a.runs.get_run(ORG, run.id)
        assert fresh is not None and fresh.cancel_requested

    run_on(database_url, body)


def test_organisation_run_counts_are_read_from_the_database(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        for _ in range(3):
            await new_session_with_run(a, version)
        counted = await b.leases.active_runs_by_org()
        assert counted.get(ORG) == 3
        assert counted.get("globex", 0) == 0
        assert counted == {ORG: 3}

    run_on(database_url, body)


# -- conversations ---------------------------------------------------------------------------


def test_messages_are_appended_with_their_run_and_read_in_order(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session = a_session(version)
        given = messages_of(session, None, "earlier question", "earlier answer")
        run = a_run(session)
        await a.runs.record(
            Journal(
                session=session, session_is_new=True, epoch=1, new_runs=[run], new_messages=given
            )
        )
        added = messages_of(session, run, "question", "answer")
        await a.runs.record(Journal(session=session, epoch=1, runs=[run], new_messages=added))

        expected = [(m.position, m.id, m.run_id, m.role, m.content, m.date) for m in given + added]

        def rows(found: list[Message] | None) -> list[tuple[object, ...]]:
            assert found is not None
            return [(m.position, m.id, m.run_id, m.role, m.content, m.date) for m in found]

        assert rows(await b.runs.session_messages(session.id)) == expected
        assert [m[0] for m in expected] == [1, 2, 3, 4]
        assert [m[2] for m in expected] == ["", "", run.id, run.id]
        with_steps = await b.runs.session_with_steps(ORG, session.id)
        assert with_steps is not None and rows(with_steps[0].messages) == expected
        listed = await b.runs.list_sessions(ORG, "", "", Page(5, None))
        assert [rows(s.messages) for s in listed if s.id == session.id] == [expected]
        # Read without the conversation, a session still counts it (the message cap).
        plain = await b.runs.get_session(ORG, session.id)
        assert plain is not None and plain.messages is None and plain.message_count == 4
        claim = await b.leases.claim_session(ORG, session.id)
        assert claim.session is not None and claim.session.message_count == 4

    run_on(database_url, body)


def test_a_session_write_carries_only_the_messages_it_adds(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session, _, first = await session_with_a_turn(a, version)
        # Whatever the writer holds in memory, a write that adds none leaves them as they are.
        session.messages = [*first, *first]
        session.name = "renamed"
        await a.runs.record(Journal(session=session, epoch=1))
        assert [m.id for m in await b.runs.session_messages(session.id)] == [m.id for m in first]
        stored = await b.runs.get_session(ORG, session.id)
        assert stored is not None and stored.name == "renamed" and stored.message_count == 2

    run_on(database_url, body)


def test_a_refused_journal_appends_no_messages(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session, run, kept = await session_with_a_turn(a, version)
        await asyncio.sleep(LEASE * 2.5)
        claim = await b.leases.claim_session(ORG, session.id)
        assert claim.epoch == 2 and claim.session is not None
        taken = claim.session
        later = messages_of(taken, run, "new holder's question", "new holder's answer")
        await b.runs.record(Journal(session=taken, epoch=2, new_messages=later))
        # The old holder appends at the same positions: it is told that it lost the lease
        # (not that a position is taken), and nothing of its journal is written.
        stale = messages_of(session, run, "stale question", "stale answer")
        assert [m.position for m in stale] == [m.position for m in later] == [3, 4]
        with pytest.raises(LeaseLost):
            await a.runs.record(Journal(session=session, epoch=1, runs=[run], new_messages=stale))
        found = await b.runs.session_messages(session.id)
        assert [m.id for m in found] == [m.id for m in kept + later]
        stored = await b.runs.get_session(ORG, session.id)
        assert stored is not None and stored.message_count == 4

    run_on(database_url, body)


def test_a_stale_journal_committed_beside_the_holders_own_is_still_refused(
    database_url: str,
) -> None:
    """One writer, two epochs of one session in its queue (the old holder's journal stuck
    while the session went elsewhere and came back): they never share a commit, where only
    the newer epoch's check would be made."""

    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session, run, kept = await session_with_a_turn(a, version)  # a holds epoch 1
        await asyncio.sleep(LEASE * 2.5)
        claim = await b.leases.claim_session(ORG, session.id)
        assert claim.epoch == 2 and claim.session is not None
        await b.runs.record(Journal(session=claim.session, epoch=2, release=True))
        again = await a.leases.claim_session(ORG, session.id)
        assert again.epoch == 3 and again.session is not None
        stale = messages_of(session, run, "stale question", "stale answer")
        outcomes = await asyncio.gather(
            a.runs.record(Journal(session=session, epoch=1, runs=[run], new_messages=stale)),
            a.runs.record(Journal(session=again.session, epoch=3)),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], LeaseLost) and outcomes[1] is None
        found = await b.runs.session_messages(session.id)
        assert [m.id for m in found] == [m.id for m in kept]
        held = again.session
        following = messages_of(held, run, "next question", "next answer")
        await a.runs.record(Journal(session=held, epoch=3, runs=[run], new_messages=following))
        found = await b.runs.session_messages(session.id)
        assert [m.id for m in found] == [m.id for m in kept + following]

    run_on(database_url, body)


def test_deleting_a_flow_deletes_its_sessions_messages(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        version = await a_version(a)
        session, _, _ = await session_with_a_turn(a, version)
        assert await b.flows.delete_flow(ORG, version.flow_id)
        assert await a.runs.session_messages(session.id) == []
        assert await a.runs.get_session(ORG, session.id) is None

    run_on(database_url, body)
