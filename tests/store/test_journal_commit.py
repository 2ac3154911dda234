"""The batch writer's statements report refusals as SQLAlchemy's errors, whatever path a
table's rows take (SQLite's multi-row INSERT included): the writer maps those to a request id
taken (IntegrityError) or an unavailable database (OperationalError)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from flowsvc.store.database import Database
from flowsvc.store.journal_commit import _statements
from tests.harness import sqlite_url


def test_a_row_refused_by_a_key_on_sqlite_is_an_integrity_error(tmp_path: Path) -> None:
    async def main() -> None:
        db = Database(sqlite_url(tmp_path / "writer.db"))
        await db.migrate()
        inserts, _ = _statements(db.batch_writer.dialect, 10)
        row = {
            "session_id": "s", "position": 1, "id": "m1", "run_id": "r", "role": "user",
            "content": "hello", "created_at": datetime.now(UTC),
        }  # fmt: skip

        def twice(conn: Connection) -> None:
            inserts["messages"].insert(conn, [row, dict(row)])  # the same key twice

        try:
            with pytest.raises(IntegrityError):
                await db.write_batch(twice)
        finally:
            await db.close()

    asyncio.run(main())


def test_a_batch_after_a_failed_one_commits_and_the_failed_one_left_nothing(
    tmp_path: Path,
) -> None:
    """A batch that fails is rolled back whole, and the writer's connection (kept between
    batches on SQLite) takes the next batch as if nothing happened."""

    async def main() -> None:
        db = Database(sqlite_url(tmp_path / "writer.db"))
        await db.migrate()

        def insert(key: str) -> Callable[[Connection], None]:
            return lambda conn: conn.exec_driver_sql(
                "INSERT INTO alembic_version (version_num) VALUES (?)", (key,)
            )

        def half_then_fail(conn: Connection) -> None:
            insert("half")(conn)
            raise RuntimeError("the batch fails after a statement")

        try:
            await db.write_batch(insert("first"))
            with pytest.raises(RuntimeError):
                await db.write_batch(half_then_fail)
            await db.write_batch(insert("after"))
            async with db.read() as reader:
                rows = await reader.execute(text("SELECT version_num FROM alembic_version"))
                kept = {r[0] for r in rows}
            assert {"first", "after"} <= kept and "half" not in kept
        finally:
            await db.close()
            await db.close()  # closing twice is harmless

    asyncio.run(main())


def test_updates_never_set_what_attaches_a_row_so_its_index_entries_stay_untouched(
    tmp_path: Path,
) -> None:
    """SQLite rewrites every index entry holding a column an UPDATE sets, even to the same
    value: the writer's updates leave out the columns fixed at insert."""

    async def main() -> None:
        db = Database(sqlite_url(tmp_path / "writer.db"))
        try:
            _, updates = _statements(db.batch_writer.dialect, 10)
            fixed = {
                "sessions": {"organisation_id", "live_flow_id", "created_at"},
                "runs": {"organisation_id", "flow_id", "session_id", "schedule_id", "created_at"},
                "steps": {"organisation_id", "session_id", "run_id", "position", "created_at"},
            }
            for table, columns in fixed.items():
                assignments = updates[table].sql.split(" SET ", 1)[1].split(" WHERE ", 1)[0]
                set_columns = {a.split("=", 1)[0].strip() for a in assignments.split(", ")}
                assert not columns & set_columns, table
                assert "status" in set_columns or (table == "steps" and "result" in set_columns)
        finally:
            await db.close()

    asyncio.run(main())
