"""Leases in SQL: which replica may change a session and run its runs.

A claim is one conditional UPDATE that takes a free or expired lease and increments the
session's epoch (the fencing token every later write of the holder names); time is the
database's clock, so replicas on machines whose clocks differ agree on expiry. Renewal runs
on a thread of its own with its own connection: a busy event loop cannot starve it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from flowsvc.domain.errors import RequestIdTaken
from flowsvc.domain.ports import SessionClaim
from flowsvc.domain.runs import FlowRun, RunStatus
from flowsvc.store.database import Database, takes_a_request_id
from flowsvc.store.dialects import REPLICA_PREFIX, now_ms_sql
from flowsvc.store.run_codec import run_from, run_row, session_from
from flowsvc.store.tables import ACTIVE_RUN, FlowRunRow, SessionRow

runs = FlowRunRow.__table__  # type: ignore[attr-defined]
sessions = SessionRow.__table__  # type: ignore[attr-defined]
_ACTIVE_JOB = "status IN ('QUEUED', 'RUNNING')"


@dataclass
class SqlLeases:
    db: Database
    owner_id: str
    lease_seconds: float

    def __post_init__(self) -> None:
        self.shared = not self.db.is_sqlite
        now = now_ms_sql(self.db.dialect_name)
        self._now = now
        ttl = int(self.lease_seconds * 1000)
        # Named, not `*`: result columns are matched to the table's by position.
        columns = ", ".join(c.name for c in sessions.c)
        self._claim = text(
            f"UPDATE sessions SET owner_id = :me, lease_epoch = lease_epoch + 1, "
            f"lease_expires_ms = {now} + {ttl} "
            f"WHERE id = :id AND organisation_id = :org "
            f"AND (owner_id IS NULL OR owner_id = :me OR lease_expires_ms < {now}) "
            f"RETURNING {columns}"
        ).columns(*sessions.c)
        self._read = text(
            f"SELECT {columns} FROM sessions WHERE id = :id AND organisation_id = :org"
        ).columns(*sessions.c)
        self._renew_sql = (
            f"UPDATE sessions SET lease_expires_ms = {now} + {ttl} "
            f"WHERE owner_id = :me AND id IN ({{ids}}) RETURNING id"
        )
        self._renew_jobs = text(
            f"UPDATE eval_jobs SET lease_expires_ms = {now} + {ttl} "
            f"WHERE owner_id = :me AND {_ACTIVE_JOB}"
        )
        self._renewer: Engine | None = None
        # Another replica's connection in the middle of a statement, waiting for its process
        # to send the rest (COPY rows, a pipeline's next message) for longer than the idle
        # limit, while it holds a lock someone waits for: PostgreSQL's idle-transaction
        # limit does not reach it, so the replicas end it. Not one of this replica's own (it
        # is not frozen, since it is looking), nor one that blocks nobody (slow is not
        # stuck), nor one this role may not end (the query would fail for all).
        self._end_stalled = text(
            "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a "
            "WHERE a.datname = current_database() "
            "AND a.application_name LIKE :replicas AND a.application_name <> :me "
            "AND a.state = 'active' AND a.wait_event = 'ClientRead' "
            "AND a.state_change < clock_timestamp() - make_interval(secs => :limit) "
            "AND pg_has_role(a.usename, 'MEMBER') "
            "AND a.pid IN (SELECT unnest(pg_blocking_pids(w.pid)) FROM pg_stat_activity w "
            "WHERE w.datname = current_database() AND w.wait_event_type = 'Lock')"
        )

    async def claim_session(self, org: str, session_id: str) -> SessionClaim:
        """Take the session's lease if it is free, expired or already this replica's."""
        async with self.db.write() as conn:
            row = (
                await conn.execute(self._claim, {"me": self.owner_id, "id": session_id, "org": org})
            ).first()
            if row is not None:
                return SessionClaim(session_from(row), row.lease_epoch)
            held = (await conn.execute(self._read, {"id": session_id, "org": org})).first()
        return SessionClaim(None if held is None else session_from(held), 0)

    async def claimable(self, limit: int) -> list[tuple[str, str]]:
        """(organisation, session) with runs to execute and no live owner: a dead replica's,
        or queued while the lease was being given up."""
        query = text(
            f"SELECT s.organisation_id, s.id FROM sessions s "
            f"WHERE s.id IN (SELECT session_id FROM flow_runs WHERE {ACTIVE_RUN}) "
            f"AND (s.owner_id IS NULL OR s.lease_expires_ms < {self._now}) LIMIT :limit"
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query, {"limit": limit})).all()
        return [(r[0], r[1]) for r in rows]

    def renew(self, session_ids: list[str]) -> set[str]:
        """Extend this replica's leases; returns those still held (blocking: a thread's)."""
        kept: set[str] = set()
        with self._renewer_engine().begin() as conn:
            for start in range(0, len(session_ids), 500):
                chunk = session_ids[start : start + 500]
                marks = ", ".join(f":i{n}" for n in range(len(chunk)))
                params: dict[str, Any] = {f"i{n}": sid for n, sid in enumerate(chunk)}
                params["me"] = self.owner_id
                rows = conn.execute(text(self._renew_sql.format(ids=marks)), params)
                kept.update(r[0] for r in rows)
            conn.execute(self._renew_jobs, {"me": self.owner_id})
        return kept

    def end_stalled_writes(self) -> int:
        """End other replicas' transactions whose connection has waited in the middle of a
        statement for its process longer than the idle limit, holding locks others wait for:
        a replica frozen or cut off there holds its row locks against every claim until it
        wakes, as one between statements would if PostgreSQL did not end it. Returns how many
        (blocking: a thread's). A replica that was only slow has its batch refused and
        commits it again."""
        limit = self.db.idle_transaction_limit
        if limit is None:
            return 0
        with self._renewer_engine().begin() as conn:
            ended = conn.execute(
                self._end_stalled,
                {"replicas": REPLICA_PREFIX + "%", "me": self.db.application_name, "limit": limit},
            )
            return sum(1 for (done,) in ended if done)

    def _renewer_engine(self) -> Engine:
        """The renewal thread's own connection, opened on first use."""
        if self._renewer is None:
            self._renewer = self.db.sync_engine()
        return self._renewer

    def close(self) -> None:
        if self._renewer is not None:
            self._renewer.dispose()

    async def active_runs(self, session_id: str) -> list[FlowRun]:
        """The session's QUEUED and RUNNING runs, oldest first (a RUNNING one before all)."""
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    text(
                        f"SELECT * FROM flow_runs WHERE session_id = :sid "
                        f"AND {ACTIVE_RUN} ORDER BY created_at, id"
                    ).columns(*runs.c),
                    {"sid": session_id},
                )
            ).all()
        found = [run_from(r) for r in rows]
        found.sort(key=lambda r: r.status is not RunStatus.RUNNING)
        return found

    async def active_runs_of_flow(self, org: str, flow_id: str) -> list[FlowRun]:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    text(
                        f"SELECT * FROM flow_runs WHERE organisation_id = :org "
                        f"AND flow_id = :flow AND {ACTIVE_RUN}"
                    ).columns(*runs.c),
                    {"org": org, "flow": flow_id},
                )
            ).all()
        return [run_from(r) for r in rows]

    async def active_runs_by_org(self) -> dict[str, int]:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    text(
                        f"SELECT organisation_id, count(*) FROM flow_runs "
                        f"WHERE {ACTIVE_RUN} GROUP BY organisation_id"
                    )
                )
            ).all()
        return {r[0]: int(r[1]) for r in rows}

    async def insert_queued_run(self, run: FlowRun, *, only_if_idle: bool) -> bool:
        """Insert a QUEUED run; with only_if_idle (REJECT), only if its session has no run
        going, decided under the session's row lock so two replicas cannot both see it idle."""
        async with self.db.write() as conn:
            if only_if_idle:
                await _lock_session(conn, run.session_id)
                busy = (
                    await conn.execute(
                        text(
                            f"SELECT 1 FROM flow_runs WHERE session_id = :sid "
                            f"AND {ACTIVE_RUN} LIMIT 1"
                        ),
                        {"sid": run.session_id},
                    )
                ).first()
                if busy is not None:
                    return False
            try:
                await conn.execute(runs.insert().values(run_row(run)))
            except IntegrityError as exc:
                if not takes_a_request_id(exc):
                    raise
                raise RequestIdTaken(run.request_id) from exc
        return True

    async def request_cancel(self, org: str, run_id: str) -> bool:
        async with self.db.write() as conn:
            result = await conn.execute(
                text(
                    f"UPDATE flow_runs SET cancel_requested = :yes WHERE id = :id "
                    f"AND organisation_id = :org AND {ACTIVE_RUN}"
                ),
                {"id": run_id, "org": org, "yes": True},
            )
        return bool(result.rowcount)

    async def cancel_requests(self) -> list[str]:
        """Active runs somebody asked to cancel."""
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    text(
                        f"SELECT id FROM flow_runs WHERE {ACTIVE_RUN} "
                        f"AND cancel_requested = :yes"
                    ),
                    {"yes": True},
                )
            ).all()
        return [r[0] for r in rows]

    async def release_all(self) -> None:
        """Shutdown: give up every lease now, so other replicas take over at once."""
        async with self.db.write() as conn:
            for table in ("sessions", "eval_jobs"):
                await conn.execute(
                    text(
                        f"UPDATE {table} SET owner_id = NULL, lease_expires_ms = 0 "
                        f"WHERE owner_id = :me"
                    ),
                    {"me": self.owner_id},
                )

    async def forget_dead_owners(self) -> None:
        """SQLite only, on start: one process serves the file, so every lease is stale."""
        async with self.db.write() as conn:
            for table in ("sessions", "eval_jobs"):
                await conn.execute(
                    text(
                        f"UPDATE {table} SET owner_id = NULL, lease_expires_ms = 0 "
                        f"WHERE owner_id IS NOT NULL"
                    )
                )


async def _lock_session(conn: Any, session_id: str) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(
            text("SELECT 1 FROM sessions WHERE id = :sid FOR UPDATE"), {"sid": session_id}
        )
    # SQLite: the write transaction began IMMEDIATE and already excludes every other writer.
