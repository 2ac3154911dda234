"""The schema comes from migrations, and the migrations match the tables the code uses."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Engine

from flowsvc.config import normalize_database_url
from flowsvc.store.column_types import UTCDateTime
from flowsvc.store.database import MIGRATIONS, Database
from flowsvc.store.tables import SessionMessageRow, metadata
from tests import postgres
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

    from flowsvc.store.column_types import UTCDateTime

    dialect = sqlite.dialect()
    kind = UTCDateTime()
    reference = kind.dialect_impl(dialect).bind_processor(dialect)
    fast = kind.fast_bind_processor(dialect)
    for value in (
        None,
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=timezone(timedelta(hours=2))),
        # The fast path's edges: one microsecond, a full fraction across an offset, the
        # first and last years.
        datetime(2026, 12, 3, 18, 25, 0, 5, tzinfo=UTC),
        datetime(2026, 1, 1, 1, 1, 1, 999999, tzinfo=timezone(timedelta(hours=2))),
        datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ):
        assert fast(value) == reference(value)


def test_a_migration_on_postgresql_is_not_ended_by_the_idle_transaction_limit() -> None:
    # A server's connections have PostgreSQL end a transaction idle past half a lease (1 s
    # with the tests' leases); alembic reads its scripts between a migration's statements.
    # A limit of a millisecond, shorter than those pauses, must not end the migration.
    with postgres.fresh_database() as url:

        async def run() -> str:
            db = Database(normalize_database_url(url), idle_transaction_limit=0.001)
            try:
                await db.migrate()
                async with db.read() as conn:
                    return str(
                        (await conn.execute(sa.text("SELECT version_num FROM alembic_version")))
                        .scalar_one()
                    )
            finally:
                await db.close()

        head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
        assert asyncio.run(run()) == head


@pytest.fixture(params=["sqlite", "postgresql"])
def sync_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    with postgres.fresh_database() as url:
        yield "postgresql+psycopg://" + url.split("://", 1)[1]


def _upgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def test_session_messages_move_from_the_session_row_into_their_table(sync_url: str) -> None:
    """Sessions stored before messages had a table of their own keep their conversations."""
    engine = create_engine(sync_url)
    try:
        _upgrade(engine, "0007")
        old = sa.table(
            "sessions",
            *(sa.column(c) for c in ("id", "organisation_id", "live_flow_id", "flow_version_id",
                                     "version", "name", "status", "expiration_seconds",
                                     "steps_count", "current_step_id", "error", "cost",
                                     "last_seq", "lease_epoch", "lease_expires_ms",
                                     "request_digest")),
            sa.column("inputs", sa.JSON()),
            sa.column("variables", sa.JSON()),
            sa.column("costs", sa.JSON()),
            sa.column("messages", sa.JSON()),
            sa.column("expires_at", UTCDateTime()),
            sa.column("created_at", UTCDateTime()),
            sa.column("updated_at", UTCDateTime()),
        )
        stamp = datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=UTC)
        conversation = [
            {"id": f"m{n}", "date": (stamp + timedelta(seconds=n)).isoformat(),
             "role": "user" if n % 2 else "assistant", "content": f"say {n}"}
            for n in range(1, 4)
        ]
        with engine.begin() as conn:
            for sid, listed in (("s-talk", conversation), ("s-quiet", [])):
                conn.execute(old.insert().values(
                    id=sid, organisation_id="acme", live_flow_id="f", flow_version_id="v",
                    version=1, name="", status="COMPLETED", expiration_seconds=60,
                    steps_count=0, current_step_id="", error="", cost=0.0, last_seq=0,
                    lease_epoch=0, lease_expires_ms=0, request_digest="", inputs={},
                    variables={}, costs=[], messages=listed, expires_at=stamp,
                    created_at=stamp, updated_at=stamp,
                ))
        _upgrade(engine, "head")
        with engine.connect() as conn:
            counts = dict(conn.execute(sa.text("SELECT id, messages_count FROM sessions")).all())
            moved = conn.execute(
                sa.select(SessionMessageRow.__table__).order_by(  # type: ignore[attr-defined]
                    sa.text("session_id"), sa.text("position")
                )
            ).all()
        assert counts == {"s-talk": 3, "s-quiet": 0}
        assert [(r.session_id, r.position, r.id, r.run_id, r.role, r.content) for r in moved] == [
            ("s-talk", n, f"m{n}", "", "user" if n % 2 else "assistant", f"say {n}")
            for n in range(1, 4)
        ]
        assert [r.created_at for r in moved] == [stamp + timedelta(seconds=n) for n in (1, 2, 3)]
        assert "messages" not in {c["name"] for c in inspect(engine).get_columns("sessions")}
    finally:
        engine.dispose()
