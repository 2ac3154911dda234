"""The schema comes from migrations, and the migrations match the tables the code uses."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from flowsvc.store.database import Database
from flowsvc.store.tables import metadata
from tests.harness import sqlite_url


def _migrate(path: Path) -> None:
    async def run() -> None:
        db = Database(sqlite_url(path))
        await db.migrate()
        await db.close()

    asyncio.run(run())


def test_migrations_create_exactly_the_models_schema(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    _migrate(path)
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == [], f"tables and migrations disagree: {diff}; write a migration"


def test_migrating_twice_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    _migrate(path)
    before = sorted(inspect(create_engine(f"sqlite:///{path}")).get_table_names())
    _migrate(path)
    after = sorted(inspect(create_engine(f"sqlite:///{path}")).get_table_names())
    assert before == after and "alembic_version" in after


def test_database_runs_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    _migrate(path)
    with create_engine(f"sqlite:///{path}").connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_batch_writer_stores_datetimes_exactly_as_sqlalchemy_does() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    from sqlalchemy.dialects import sqlite

    from flowsvc.store.tables import UTCDateTime

    dialect = sqlite.dialect()
    kind = UTCDateTime()
    reference = kind.dialect_impl(dialect).bind_processor(dialect)
    fast = kind.fast_bind_processor(dialect)
    for value in (
        None,
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=timezone(timedelta(hours=2))),
    ):
        assert fast(value) == reference(value)
