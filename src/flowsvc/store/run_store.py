"""Sessions, runs, steps and events in SQL: reads, and journals handed to the group-commit
writer (store/journal_writer.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, select, text
from sqlalchemy.sql import Select

from flowsvc.domain.model import Step
from flowsvc.domain.paging import Page
from flowsvc.domain.runs import (
    FlowRun,
    Journal,
    Message,
    RunEvent,
    Session,
    SessionStatus,
    SessionStep,
)
from flowsvc.store.database import Database
from flowsvc.store.event_codec import event_from, version_ids_in
from flowsvc.store.journal_writer import JournalWriter
from flowsvc.store.run_codec import (
    message_from_row,
    run_from,
    session_from,
    step_from,
)
from flowsvc.store.sql_store import SqlStore, newest_first
from flowsvc.store.tables import (
    SCHEDULED_RUN,
    FlowRunRow,
    RunEventRow,
    SessionMessageRow,
    SessionRow,
    SessionStepRow,
)
from flowsvc.store.threaded_reads import Reader, execute_all

log = logging.getLogger("flowsvc.store")

sessions = SessionRow.__table__  # type: ignore[attr-defined]
runs = FlowRunRow.__table__  # type: ignore[attr-defined]
steps = SessionStepRow.__table__  # type: ignore[attr-defined]
events = RunEventRow.__table__  # type: ignore[attr-defined]
messages = SessionMessageRow.__table__  # type: ignore[attr-defined]


# Sessions the expiry sweep looks at, named rather than "all but EXPIRED and RUNNING": the
# sweep then reads the expiry index for each status up to now, not every session there is.
_NOT_EXPIRABLE = (SessionStatus.EXPIRED, SessionStatus.RUNNING)
_EXPIRABLE = [s.value for s in SessionStatus if s not in _NOT_EXPIRABLE]

# Hot reads, built once: building a statement per call costs more than running it.
_SESSION = select(sessions).where(
    sessions.c.id == bindparam("id"), sessions.c.organisation_id == bindparam("org")
)
_SESSION_STEPS = (
    select(steps).where(steps.c.session_id == bindparam("session_id")).order_by(steps.c.position)
)
_RUN = select(runs).where(runs.c.id == bindparam("id"), runs.c.organisation_id == bindparam("org"))
_SESSION_MESSAGES = (
    select(messages)
    .where(messages.c.session_id == bindparam("session_id"))
    .order_by(messages.c.position)
)
_RUN_STEPS = select(steps).where(steps.c.run_id == bindparam("run_id")).order_by(steps.c.position)
# A session's last step (params: session_id), and its last step in a status (and: status):
# every SubmitUserInput looks up the step waiting for input.
_LAST_STEP = (
    select(steps)
    .where(steps.c.session_id == bindparam("session_id"))
    .order_by(steps.c.position.desc())
    .limit(1)
)
_LAST_STEP_IN = _LAST_STEP.where(steps.c.status == bindparam("status"))
# The run a request id made in an organisation (params: org, request_id).
RUN_ID_BY_REQUEST = select(runs.c.id).where(
    runs.c.organisation_id == bindparam("org"), runs.c.request_id == bindparam("request_id")
)


class SqlRunStore:
    def __init__(self, db: Database, flows: SqlStore, writer: JournalWriter) -> None:
        self.db = db
        self._flows = flows
        self.writer = writer

    def record(self, journal: Journal) -> asyncio.Future[None]:
        return self.writer.record(journal)

    # -- reading -----------------------------------------------------------------------

    async def _step_lookup(self, version_ids: set[str], conn: Reader | None = None) -> Any:
        loaded = await self._flows.load_versions(version_ids, conn)
        index = {(vid, s.id): s for vid, version in loaded.items() for s in version.graph.steps}

        def lookup(version_id: str, step_id: str) -> Step:
            return index[(version_id, step_id)]

        return lookup

    async def _steps(
        self, conn: Reader, query: Select[Any], params: dict[str, Any] | None = None
    ) -> list[SessionStep]:
        return await self._steps_of(conn, (await conn.execute(query, params or {})).all())

    async def _steps_of(self, conn: Reader, rows: Sequence[Any]) -> list[SessionStep]:
        lookup = await self._step_lookup({r.flow_version_id for r in rows}, conn)
        return [step_from(r, lookup) for r in rows]

    @staticmethod
    async def _messages_of(
        conn: Reader, session_ids: list[str]
    ) -> dict[str, list[Message]]:
        """The conversations of these sessions, oldest message first."""
        if len(session_ids) == 1:
            rows = (await conn.execute(_SESSION_MESSAGES, {"session_id": session_ids[0]})).all()
        else:
            rows = (
                await conn.execute(
                    select(messages)
                    .where(messages.c.session_id.in_(session_ids))
                    .order_by(messages.c.session_id, messages.c.position)
                )
            ).all()
        found: dict[str, list[Message]] = {sid: [] for sid in session_ids}
        for r in rows:
            found[r.session_id].append(message_from_row(r))
        return found

    async def session_messages(self, session_id: str) -> list[Message]:
        async with self.db.read() as conn:
            return (await self._messages_of(conn, [session_id]))[session_id]

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
            # Together: the steps and messages of a session that turns out not to exist are
            # none, and one hop costs less than three.
            session_found, steps_found, messages_found = await execute_all(
                conn,
                [
                    (_SESSION, {"id": session_id, "org": org}),
                    (_SESSION_STEPS, {"session_id": session_id}),
                    (_SESSION_MESSAGES, {"session_id": session_id}),
                ],
            )
            row = session_found.first()
            if row is None:
                return None
            found = await self._steps_of(conn, steps_found.all())
            conversation = [message_from_row(r) for r in messages_found.all()]
        return session_from(row, conversation), found

    async def last_step(
        self, session_id: str, status: str = "", excluding: Collection[str] = ()
    ) -> SessionStep | None:
        query = _LAST_STEP_IN if status else _LAST_STEP
        if excluding:  # a rollback's: rare, built when needed
            query = query.where(steps.c.id.not_in(list(excluding)))
        params = {"session_id": session_id}
        if status:
            params["status"] = status
        async with self.db.read() as conn:
            found = await self._steps(conn, query, params)
        return found[0] if found else None

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
            conversations = await self._messages_of(conn, [r.id for r in rows]) if rows else {}
        return [session_from(r, conversations[r.id]) for r in rows]

    async def delete_session(self, org: str, session_id: str) -> bool:
        async with self.db.write() as conn:
            result = await conn.execute(
                delete(sessions).where(
                    sessions.c.id == session_id, sessions.c.organisation_id == org
                )
            )
            if not result.rowcount:
                return False
            for table in (events, steps, runs, messages):
                await conn.execute(delete(table).where(table.c.session_id == session_id))
        return True

    async def get_run(self, org: str, run_id: str) -> FlowRun | None:
        async with self.db.read() as conn:
            run_found, steps_found = await execute_all(
                conn, [(_RUN, {"id": run_id, "org": org}), (_RUN_STEPS, {"run_id": run_id})]
            )
            row = run_found.first()
            if row is None:
                return None
            run = run_from(row)
            run.steps = await self._steps_of(conn, steps_found.all())
        return run

    async def run_by_request(self, org: str, request_id: str) -> FlowRun | None:
        async with self.db.read() as conn:
            params = {"org": org, "request_id": request_id}
            row = (await conn.execute(RUN_ID_BY_REQUEST, params)).first()
        return None if row is None else await self.get_run(org, row.id)

    async def list_runs(
        self, org: str, flow_id: str, session_id: str, page: Page, schedule_id: str = ""
    ) -> list[FlowRun]:
        query = select(runs).where(runs.c.organisation_id == org)
        if schedule_id:
            query = query.where(runs.c.schedule_id == schedule_id, text(SCHEDULED_RUN))
        if flow_id:
            query = query.where(runs.c.flow_id == flow_id)
        if session_id:
            query = query.where(runs.c.session_id == session_id)
        async with self.db.read() as conn:
            rows = (await conn.execute(newest_first(query, runs, page))).all()
        return [run_from(r) for r in rows]

    async def session_runs(self, org: str, session_id: str) -> list[FlowRun]:
        query = select(runs).where(runs.c.organisation_id == org, runs.c.session_id == session_id)
        async with self.db.read() as conn:
            rows = (await conn.execute(query.order_by(runs.c.created_at, runs.c.id))).all()
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

    async def last_seqs(self, session_ids: list[str]) -> dict[str, int]:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(sessions.c.id, sessions.c.last_seq).where(sessions.c.id.in_(session_ids))
                )
            ).all()
        return {r.id: r.last_seq for r in rows}

    async def sessions_expired_by(self, when: datetime, limit: int) -> list[tuple[str, str]]:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(sessions.c.organisation_id, sessions.c.id)
                    .where(sessions.c.status.in_(_EXPIRABLE), sessions.c.expires_at <= when)
                    .limit(limit)
                )
            ).all()
        return [(r.organisation_id, r.id) for r in rows]
