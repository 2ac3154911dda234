"""Sessions, runs, steps and events in SQL, with a group-commit writer.

The engine hands over one Journal per move and does not wait unless it must; the writer
commits whatever has queued up in one transaction with one statement per table, then
resolves each journal's future in order. Many concurrent runs share each commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Select

from flowsvc.domain.model import Step
from flowsvc.domain.paging import Page
from flowsvc.domain.runs import (
    FlowRun,
    Journal,
    RunEvent,
    RunStatus,
    Session,
    SessionStatus,
    SessionStep,
)
from flowsvc.store.database import Database
from flowsvc.store.run_codec import (
    event_from,
    event_row,
    run_from,
    run_row,
    session_from,
    session_row,
    step_from,
    step_row,
    version_ids_in,
)
from flowsvc.store.sql_store import SqlStore, newest_first
from flowsvc.store.tables import (
    FlowRunRow,
    RunEventRow,
    SessionRow,
    SessionStepRow,
    UTCDateTime,
)

log = logging.getLogger("flowsvc.store")

sessions = SessionRow.__table__  # type: ignore[attr-defined]
runs = FlowRunRow.__table__  # type: ignore[attr-defined]
steps = SessionStepRow.__table__  # type: ignore[attr-defined]
events = RunEventRow.__table__  # type: ignore[attr-defined]

MAX_JOURNALS_PER_COMMIT = 256

# Hot reads, built once: building a statement per call costs more than running it.
_SESSION = select(sessions).where(
    sessions.c.id == bindparam("id"), sessions.c.organisation_id == bindparam("org")
)
_SESSION_STEPS = (
    select(steps).where(steps.c.session_id == bindparam("session_id")).order_by(steps.c.position)
)
_RUN = select(runs).where(runs.c.id == bindparam("id"), runs.c.organisation_id == bindparam("org"))
_RUN_STEPS = select(steps).where(steps.c.run_id == bindparam("run_id")).order_by(steps.c.position)


@dataclass
class _Rows:
    """A journal turned into row values at the moment it was recorded."""

    inserts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    updates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, journal: Journal) -> _Rows:
        rows = cls(
            inserts={
                "sessions": [session_row(journal.session)]
                if journal.session is not None and journal.session_is_new
                else [],
                "runs": [run_row(r) for r in journal.new_runs],
                "steps": [step_row(s) for s in journal.new_steps],
            },
            updates={
                "sessions": [session_row(journal.session)]
                if journal.session is not None and not journal.session_is_new
                else [],
                "runs": [run_row(r) for r in journal.runs],
                "steps": [step_row(s) for s in journal.steps],
            },
            events=[event_row(e) for e in journal.events],
        )
        return rows


_TABLES = {"sessions": sessions, "runs": runs, "steps": steps}


class _Statement:
    """A statement compiled once for the batch writer's dialect, with the bind processors of
    its columns, so a batch goes to the driver's executemany as plain tuples."""

    def __init__(self, statement: Any, dialect: Any, columns: dict[str, Any]) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        names = list(compiled.positiontup or compiled.bind_names.values())
        self.plan = []
        for name in names:
            key = name.removeprefix("v_")
            kind = columns[key].type
            if isinstance(kind, UTCDateTime):
                processor = kind.fast_bind_processor(dialect)
            else:
                processor = kind.dialect_impl(dialect).bind_processor(dialect)
            self.plan.append((key, processor))

    def params(self, rows: Any) -> list[tuple[Any, ...]]:
        plan = self.plan
        return [tuple(p(row[k]) if p else row[k] for k, p in plan) for row in rows]


def _statements(dialect: Any) -> tuple[dict[str, _Statement], dict[str, _Statement]]:
    inserts: dict[str, _Statement] = {}
    updates: dict[str, _Statement] = {}
    for name, table in {**_TABLES, "events": events}.items():
        columns = {c.name: c for c in table.c}
        inserts[name] = _Statement(
            table.insert().values({c: bindparam(f"v_{c}") for c in columns}), dialect, columns
        )
        if name != "events":
            updates[name] = _Statement(
                update(table)
                .where(table.c.id == bindparam("v_id"))
                .values({c: bindparam(f"v_{c}") for c in columns if c != "id"}),
                dialect,
                columns,
            )
    return inserts, updates


def _merge(
    batch: Sequence[_Rows],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Last state of each row wins; a row inserted in this batch is inserted in its last state."""
    inserts: dict[str, dict[str, Any]] = {name: {} for name in _TABLES}
    updates: dict[str, dict[str, Any]] = {name: {} for name in _TABLES}
    all_events: list[dict[str, Any]] = []
    for rows in batch:
        for name, values in rows.inserts.items():
            for row in values:
                inserts[name][row["id"]] = row
        for name, values in rows.updates.items():
            for row in values:
                if row["id"] in inserts[name]:
                    inserts[name][row["id"]] = row
                else:
                    updates[name][row["id"]] = row
        all_events.extend(rows.events)
    return inserts, updates, all_events


class SqlRunStore:
    def __init__(self, db: Database, flows: SqlStore) -> None:
        self.db = db
        self._flows = flows
        self._pending: list[tuple[_Rows, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._insert_sql, self._update_sql = _statements(db.batch_writer.dialect)
        self.commits = 0  # group commits done; read by benchmarks

    # -- writing -----------------------------------------------------------------------

    def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="flowsvc-journal")

    async def close(self) -> None:
        while self._pending:
            self._wake.set()
            await asyncio.sleep(0.001)
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None

    def record(self, journal: Journal) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((_Rows.of(journal), future))
        self._wake.set()
        if self._writer is None:
            self.start()
        return future

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[:MAX_JOURNALS_PER_COMMIT]
                del self._pending[:MAX_JOURNALS_PER_COMMIT]
                try:
                    await self._commit([rows for rows, _ in batch])
                except Exception:
                    log.exception("group commit failed; committing journals one by one")
                    for rows, future in batch:
                        try:
                            await self._commit([rows])
                        except Exception as exc:
                            if not future.done():
                                future.set_exception(exc)
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def _commit(self, batch: Sequence[_Rows]) -> None:
        inserts, updates, new_events = _merge(batch)

        def write(conn: Connection) -> None:
            for name in ("sessions", "runs", "steps"):
                if inserts[name]:
                    statement = self._insert_sql[name]
                    conn.exec_driver_sql(statement.sql, statement.params(inserts[name].values()))
            if new_events:
                statement = self._insert_sql["events"]
                conn.exec_driver_sql(statement.sql, statement.params(new_events))
            for name in ("sessions", "runs", "steps"):
                if updates[name]:
                    statement = self._update_sql[name]
                    conn.exec_driver_sql(statement.sql, statement.params(updates[name].values()))

        await self.db.write_batch(write)
        self.commits += 1

    # -- reading -----------------------------------------------------------------------

    async def _step_lookup(self, version_ids: set[str], conn: AsyncConnection | None = None) -> Any:
        loaded = await self._flows.load_versions(version_ids, conn)
        index = {(vid, s.id): s for vid, version in loaded.items() for s in version.graph.steps}

        def lookup(version_id: str, step_id: str) -> Step:
            return index[(version_id, step_id)]

        return lookup

    async def _steps(
        self, conn: AsyncConnection, query: Select[Any], params: dict[str, Any] | None = None
    ) -> list[SessionStep]:
        rows = (await conn.execute(query, params or {})).all()
        lookup = await self._step_lookup({r.flow_version_id for r in rows}, conn)
        return [step_from(r, lookup) for r in rows]

    async def _one_session(
        self, query: Select[Any], params: dict[str, Any] | None = None
    ) -> Session | None:
        async with self.db.read() as conn:
            row = (await conn.execute(query, params or {})).first()
        return None if row is None else session_from(row)

    async def get_session(self, org: str, session_id: str) -> Session | None:
        return await self._one_session(_SESSION, {"id": session_id, "org": org})

    async def session_by_request(self, org: str, request_id: str) -> Session | None:
        return await self._one_session(
            select(sessions).where(
                sessions.c.organisation_id == org, sessions.c.request_id == request_id
            )
        )

    async def session_with_steps(
        self, org: str, session_id: str
    ) -> tuple[Session, list[SessionStep]] | None:
        async with self.db.read() as conn:
            row = (await conn.execute(_SESSION, {"id": session_id, "org": org})).first()
            if row is None:
                return None
            found = await self._steps(conn, _SESSION_STEPS, {"session_id": session_id})
        return session_from(row), found

    async def session_steps(self, session_id: str) -> list[SessionStep]:
        async with self.db.read() as conn:
            return await self._steps(conn, _SESSION_STEPS, {"session_id": session_id})

    async def step_by_input_request(self, session_id: str, request_id: str) -> SessionStep | None:
        async with self.db.read() as conn:
            found = await self._steps(
                conn,
                select(steps).where(
                    steps.c.session_id == session_id, steps.c.input_request_id == request_id
                ),
            )
        return found[0] if found else None

    async def list_sessions(self, org: str, flow_id: str, status: str, page: Page) -> list[Session]:
        query = select(sessions).where(sessions.c.organisation_id == org)
        if flow_id:
            query = query.where(sessions.c.live_flow_id == flow_id)
        if status:
            query = query.where(sessions.c.status == status)
        async with self.db.read() as conn:
            rows = (await conn.execute(newest_first(query, sessions, page))).all()
        return [session_from(r) for r in rows]

    async def delete_session(self, org: str, session_id: str) -> bool:
        async with self.db.write() as conn:
            result = await conn.execute(
                delete(sessions).where(
                    sessions.c.id == session_id, sessions.c.organisation_id == org
                )
            )
            if not result.rowcount:
                return False
            for table in (events, steps, runs):
                await conn.execute(delete(table).where(table.c.session_id == session_id))
        return True

    async def get_run(self, org: str, run_id: str) -> FlowRun | None:
        async with self.db.read() as conn:
            row = (await conn.execute(_RUN, {"id": run_id, "org": org})).first()
            if row is None:
                return None
            run = run_from(row)
            run.steps = await self._steps(conn, _RUN_STEPS, {"run_id": run_id})
        return run

    async def run_by_request(self, org: str, request_id: str) -> FlowRun | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(runs.c.id).where(
                        runs.c.organisation_id == org, runs.c.request_id == request_id
                    )
                )
            ).first()
        return None if row is None else await self.get_run(org, row.id)

    async def list_runs(self, org: str, flow_id: str, session_id: str, page: Page) -> list[FlowRun]:
        query = select(runs).where(runs.c.organisation_id == org)
        if flow_id:
            query = query.where(runs.c.flow_id == flow_id)
        if session_id:
            query = query.where(runs.c.session_id == session_id)
        async with self.db.read() as conn:
            rows = (await conn.execute(newest_first(query, runs, page))).all()
        return [run_from(r) for r in rows]

    async def run_steps(self, run_id: str) -> list[SessionStep]:
        async with self.db.read() as conn:
            return await self._steps(conn, _RUN_STEPS, {"run_id": run_id})

    async def events_after(
        self, session_id: str, after_seq: int, run_id: str, limit: int
    ) -> list[RunEvent]:
        query = select(events).where(events.c.session_id == session_id, events.c.seq > after_seq)
        if run_id:
            query = query.where(events.c.run_id == run_id)
        async with self.db.read() as conn:
            rows = (await conn.execute(query.order_by(events.c.seq).limit(limit))).all()
        version_ids: set[str] = set()
        for r in rows:
            version_ids |= version_ids_in(r.payload)
        lookup = await self._step_lookup(version_ids)
        return [event_from(r, lookup) for r in rows]

    async def unfinished_runs(self) -> list[FlowRun]:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(runs)
                    .where(runs.c.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value]))
                    .order_by(runs.c.created_at, runs.c.id)
                )
            ).all()
        return [run_from(r) for r in rows]

    async def sessions_expired_by(self, when: datetime, limit: int) -> list[tuple[str, str]]:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(sessions.c.organisation_id, sessions.c.id)
                    .where(
                        sessions.c.status.not_in(
                            [SessionStatus.EXPIRED.value, SessionStatus.RUNNING.value]
                        ),
                        sessions.c.expires_at <= when,
                    )
                    .limit(limit)
                )
            ).all()
        return [(r.organisation_id, r.id) for r in rows]
