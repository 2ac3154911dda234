"""The batch writer's statements report refusals as SQLAlchemy's errors, whatever path a
table's rows take (SQLite's multi-row INSERT included): the writer maps those to a request id
taken (IntegrityError) or an unavailable database (OperationalError)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from flowsvc.store.database import Database
from flowsvc.store.journal_writer import _statements
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
