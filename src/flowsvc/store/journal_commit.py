"""One group commit of journals: the statements, in the transaction's order (see
journal_writer.py for what a batch is and who waits for it).

In that transaction, in this order:
1. new sessions, runs and steps are inserted;
2. each session with new events takes its next seqs (`last_seq = last_seq + n ... RETURNING`):
   the database allocates them, never a process's memory, and the row lock it takes orders
   concurrent writers of one session, so seqs become visible in order (a session inserted in
   this transaction, invisible to any other until the commit, counts from the row it is
   inserted with, raised before the insert);
3. the events are inserted with those seqs, and the webhook deliveries they call for (the
   outbox: durable exactly when their events are);
4. sessions, runs and steps are updated; a session update names the lease epoch its writer
   holds, and a journal whose epoch is no longer the session's is refused whole (Fenced);
5. messages new to a session's conversation are appended (after the fencing: a writer that
   lost the lease is refused as such, not as a position taken);
6. leases given up are released, and sessions with queued runs among them are reported, so
   the engine claims them again (a run queued while the lease was going away is not lost).

It runs where the commit is made: the batch writer's thread, or the writer process
(writer_process.py), which is why it takes row values only, never the engine's records.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, false, literal_column, update
from sqlalchemy.engine import Connection

from flowsvc.domain.runs import RunStatus
from flowsvc.store.column_types import UTCDateTime
from flowsvc.store.dialects import driver_placeholder, now_ms_sql
from flowsvc.store.event_codec import event_row, payload_text
from flowsvc.store.journal_rows import JournalRows, merge_rows, seqs_of_new_sessions
from flowsvc.store.tables import (
    ACTIVE_RUN,
    FlowRunRow,
    RunEventRow,
    SessionMessageRow,
    SessionRow,
    SessionStepRow,
)

if TYPE_CHECKING:
    from flowsvc.store.webhook_store import Outbox

sessions = SessionRow.__table__  # type: ignore[attr-defined]
runs = FlowRunRow.__table__  # type: ignore[attr-defined]
steps = SessionStepRow.__table__  # type: ignore[attr-defined]
events = RunEventRow.__table__  # type: ignore[attr-defined]
messages = SessionMessageRow.__table__  # type: ignore[attr-defined]

_TABLES = {"sessions": sessions, "runs": runs, "steps": steps}
# Columns a journal never overwrites: the seq counter is the database's, the lease columns
# belong to claims and releases, a cancel request to whoever asked, a request's identity
# to the request; and what a row is attached to (its organisation, flow, session, run,
# schedule, position) never changes after its insert. SQLite rewrites every index entry
# that holds a column an UPDATE sets, to the same value or not: a kept session's update
# rewrote its org and org/flow index entries, dirtying their pages for the WAL, every run.
_NOT_UPDATED = {
    "sessions": {"id", "last_seq", "owner_id", "lease_epoch", "lease_expires_ms",
                 "request_id", "request_digest", "created_at", "parent_session_id",
                 "forked_from_step_id", "organisation_id", "live_flow_id"},
    "runs": {"id", "cancel_requested", "request_id", "request_digest", "trace_context",
             "created_at", "organisation_id", "flow_id", "session_id", "schedule_id"},
    "steps": {"id", "created_at", "organisation_id", "session_id", "run_id", "position"},
}


class Fenced(Exception):
    """Inside a batch: some session update found another epoch."""


class _Statement:
    """A statement compiled once for the batch writer's dialect, with the bind processors of
    its columns, so a batch goes to the driver's executemany as plain parameters."""

    def __init__(self, statement: Any, dialect: Any, columns: dict[str, Any]) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.positional = bool(compiled.positional)
        self.names = list(compiled.positiontup or compiled.bind_names.values())
        keys = [name.removeprefix("v_") for name in self.names]
        self._values = _Values(keys, [_bind(columns[key], dialect) for key in keys])
        self._copy: tuple[str, _Values] | None = None
        self._many: tuple[str, str, int] | None = None

    def many_rows_on_sqlite(self, dialect: Any) -> None:
        """Insert with one multi-row VALUES statement: the sqlite3 module lets go of the GIL
        around every row an executemany steps, and under load each one costs the writer a
        wait for the event loop to hand it back (a run's ~20 rows took ~20 such waits)."""
        if dialect.name != "sqlite" or not self.positional:
            return
        head, _, row = self.sql.partition(" VALUES ")
        # A statement's parameters stay within SQLite's default limit (32,766).
        self._many = (f"{head} VALUES ", row, max(1, 32_766 // len(self.names)))

    def copy_on_postgresql(self, table: Any, dialect: Any) -> None:
        """Insert with COPY: psycopg's executemany costs Python work per row (a run inserts
        ~19 rows, most of them events and steps); COPY writes rows in its C loop."""
        if dialect.name != "postgresql":
            return
        names = [column.name for column in table.c]
        binds = [
            _naive_utc if isinstance(column.type, UTCDateTime) else _bind(column, dialect)
            for column in table.c
        ]
        self._copy = (f"COPY {table.name} ({', '.join(names)}) FROM STDIN", _Values(names, binds))

    def params(self, rows: Any) -> list[Any]:
        values = self._values
        if self.positional:
            return [values.of(row) for row in rows]
        names = self.names
        return [dict(zip(names, values.of(row), strict=True)) for row in rows]

    def insert(self, conn: Connection, rows: Any) -> None:
        if self._many is not None:
            head, row, most = self._many
            params = self.params(rows)  # positional: one tuple a row
            for start in range(0, len(params), most):
                chunk = params[start : start + most]
                # Through SQLAlchemy: its errors (IntegrityError for a request id taken,
                # OperationalError for a locked or full disk) are what the writer maps.
                conn.exec_driver_sql(
                    head + ", ".join([row] * len(chunk)), tuple(v for p in chunk for v in p)
                )
            return
        if self._copy is None:
            conn.exec_driver_sql(self.sql, self.params(rows))
            return
        sql, values = self._copy
        # Made before the COPY begins: from then until its last row the database waits on
        # this process mid-statement, holding the batch's locks (lease_store.py ends such a
        # wait of another replica once it outlasts the idle limit).
        made = [values.of(row) for row in rows]
        raw: Any = conn.connection.dbapi_connection  # psycopg's, in this transaction
        with raw.cursor() as cursor, cursor.copy(sql) as copy:
            for row_values in made:
                copy.write_row(row_values)


class _Values:
    """A row's values for some keys, in order, each through its bind processor if it has one:
    taken in one C call (itemgetter), only the processed ones touched one by one (a run
    writes ~270 values, most of them strings and numbers the driver takes as they are)."""

    def __init__(self, keys: list[str], binds: list[Any]) -> None:
        self._get = itemgetter(*keys) if len(keys) > 1 else lambda row: (row[keys[0]],)
        self._binds = [(i, bind) for i, bind in enumerate(binds) if bind is not None]

    def of(self, row: dict[str, Any]) -> tuple[Any, ...]:
        values = list(self._get(row))
        for i, bind in self._binds:
            values[i] = bind(values[i])
        return tuple(values)  # the driver's executemany takes tuples only


def _bind(column: Any, dialect: Any) -> Any:
    """What turns a row's value into the driver's parameter for the column."""
    if column.table is events and column.name == "payload":
        # Event payloads come as the values the engine froze: encoded here, in one C call.
        return payload_text
    kind = column.type
    if isinstance(kind, UTCDateTime):
        return kind.fast_bind_processor(dialect)
    return kind.dialect_impl(dialect).bind_processor(dialect)


def _naive_utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)


def _statements(
    dialect: Any, lease_seconds: float
) -> tuple[dict[str, _Statement], dict[str, _Statement]]:
    inserts: dict[str, _Statement] = {}
    updates: dict[str, _Statement] = {}
    expires: Any = literal_column(f"{now_ms_sql(dialect.name)} + {int(lease_seconds * 1000)}")
    for name, table in {**_TABLES, "events": events, "messages": messages}.items():
        columns = {c.name: c for c in table.c}
        written: dict[str, Any] = {c: bindparam(f"v_{c}") for c in columns}
        if name == "runs":
            written["cancel_requested"] = false()  # only ever set by a cancel request
        if name == "sessions":
            written["lease_expires_ms"] = expires  # a new session is leased to its creator
        inserts[name] = _Statement(table.insert().values(written), dialect, columns)
        inserts[name].many_rows_on_sqlite(dialect)
        if name in ("events", "steps", "messages"):
            inserts[name].copy_on_postgresql(table, dialect)
        if name not in ("events", "messages"):
            condition = table.c.id == bindparam("v_id")
            if name == "sessions":
                condition = condition & (table.c.lease_epoch == bindparam("v_lease_epoch"))
            updates[name] = _Statement(
                update(table)
                .where(condition)
                .values({c: bindparam(f"v_{c}") for c in columns if c not in _NOT_UPDATED[name]}),
                dialect,
                columns,
            )
    return inserts, updates


class JournalCommit:
    """The statements of a group commit, compiled once for one dialect."""

    def __init__(self, dialect: Any, lease_seconds: float) -> None:
        self._insert_sql, self._update_sql = _statements(dialect, lease_seconds)
        self._placeholder = p = driver_placeholder(dialect.name)
        self._release_sql = (
            f"UPDATE sessions SET owner_id = NULL, lease_expires_ms = 0 "
            f"WHERE id = {p} AND lease_epoch = {p}"
        )

    def write(
        self, conn: Connection, batch: Sequence[JournalRows], outbox: Outbox | None
    ) -> tuple[list[list[int]], list[str]]:
        """The batch, in `conn`'s transaction (event rows made here if the journal brought its
        events only). Returns each journal's seqs, in its events' order, and the sessions
        released with runs queued on them."""
        requeue: list[str] = []
        # The batch's rows are merged, and its events' rows made, where the commit is made,
        # not on the event loop: record rows are values taken at record time and events hold
        # frozen values; neither changes after.
        inserts, updates = merge_rows(batch)
        for rows in batch:
            if rows.events:
                rows.event_rows = [event_row(e) for e in rows.events]
        new_events = [row for rows in batch for row in rows.event_rows]
        releases = [rows.release for rows in batch if rows.release is not None]
        deleted_steps = [sid for rows in batch for sid in rows.deleted_steps]
        new_messages = [row for rows in batch for row in rows.messages]
        of_stored = seqs_of_new_sessions(new_events, inserts["sessions"])
        for name in ("sessions", "runs", "steps"):
            if inserts[name]:
                self._insert_sql[name].insert(conn, inserts[name].values())
        if new_events:
            if of_stored:
                self._allocate_seqs(conn, of_stored)
            self._insert_sql["events"].insert(conn, new_events)
            if outbox is not None:
                outbox.write(conn, new_events)
        if deleted_steps:
            marks = ", ".join(self._placeholder for _ in deleted_steps)
            conn.exec_driver_sql(
                f"DELETE FROM session_steps WHERE id IN ({marks})", tuple(deleted_steps)
            )
        for name in ("sessions", "runs", "steps"):
            if updates[name]:
                statement = self._update_sql[name]
                result = conn.exec_driver_sql(
                    statement.sql, statement.params(updates[name].values())
                )
                if name == "sessions" and result.rowcount != len(updates[name]):
                    raise Fenced()
        if new_messages:
            self._insert_sql["messages"].insert(conn, new_messages)
        if releases:
            conn.exec_driver_sql(self._release_sql, list(releases))
            ids = [sid for sid, _ in releases]
            marks = ", ".join(self._placeholder for _ in ids)
            found = conn.exec_driver_sql(
                f"SELECT DISTINCT session_id FROM flow_runs WHERE session_id IN ({marks}) "
                f"AND {ACTIVE_RUN} AND status = '{RunStatus.QUEUED.value}'",
                tuple(ids),
            )
            requeue.extend(r[0] for r in found)
        return [[row["seq"] for row in rows.event_rows] for rows in batch], requeue

    def _allocate_seqs(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Seqs for events of sessions already stored: the database's counter, row-locked."""
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["session_id"]] = counts.get(row["session_id"], 0) + 1
        p = self._placeholder
        cases = " ".join(f"WHEN {p} THEN {n}" for n in counts.values())
        marks = ", ".join(p for _ in counts)
        result = conn.exec_driver_sql(
            f"UPDATE sessions SET last_seq = last_seq + CASE id {cases} END "
            f"WHERE id IN ({marks}) RETURNING id, last_seq",
            (*counts, *counts),
        )
        next_seq = {sid: last - counts[sid] for sid, last in result}
        for row in rows:
            sid = row["session_id"]
            if sid not in next_seq:
                raise Fenced()  # the session was deleted meanwhile: nothing to write to
            next_seq[sid] += 1
            row["seq"] = next_seq[sid]
