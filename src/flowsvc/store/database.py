"""Engines and transactions. SQLite (WAL) by default; the same code serves PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


# JSON columns are on the hot path (event payloads): orjson encodes them several times faster.
JSON_OPTIONS: dict[str, Any] = {"json_serializer": _json_text, "json_deserializer": orjson.loads}


def _sqlite_pragmas(engine: AsyncEngine | Engine, synchronous: str, immediate: bool) -> None:
    target = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @event.listens_for(target, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    if not immediate:
        return  # readers run each SELECT in autocommit: no BEGIN/ROLLBACK round trips

    @event.listens_for(target, "begin")
    def on_begin(conn: Connection) -> None:
        # Writers take the write lock up front, so a second process waits its turn
        # instead of failing when a deferred transaction tries to upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _run_migrations(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


class Database:
    """One writer connection behind a lock (SQLite has one writer anyway) and a reader pool."""

    def __init__(
        self, url: str, *, sqlite_synchronous: str = "NORMAL", read_pool_size: int = 8
    ) -> None:
        parsed = make_url(url)
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.writer = create_async_engine(url, pool_size=1, max_overflow=0, **JSON_OPTIONS)
            # A fixed pool: opening a connection costs a thread and a file open, so callers
            # queue for one rather than open extras under load.
            self.reader = create_async_engine(
                url,
                pool_size=read_pool_size,
                max_overflow=0,
                pool_reset_on_return=None,
                **JSON_OPTIONS,
            )
            _sqlite_pragmas(self.writer, sqlite_synchronous, immediate=True)
            _sqlite_pragmas(self.reader, sqlite_synchronous, immediate=False)
        else:
            self.writer = create_async_engine(url, pool_size=4, pool_pre_ping=True, **JSON_OPTIONS)
            self.reader = self.writer
        self._write_lock = asyncio.Lock()
        # Batches of the hot path are committed by one thread on one blocking connection:
        # a whole transaction is then a single hop from the event loop, not one per statement.
        sync_url = parsed.set(drivername=parsed.get_backend_name())
        self.batch_writer: Engine = create_engine(
            sync_url, pool_size=1, max_overflow=0, **JSON_OPTIONS
        )
        if self.is_sqlite:
            _sqlite_pragmas(self.batch_writer, sqlite_synchronous, immediate=True)
        self._batch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowsvc-writer")

    async def migrate(self) -> None:
        async with self._write_lock, self.writer.begin() as conn:
            await conn.run_sync(_run_migrations)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        async with self._write_lock, self.writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.reader.connect() as conn:
            yield conn

    async def write_batch(self, work: Callable[[Connection], None]) -> None:
        """Run `work` in one transaction on the batch writer's thread."""

        def run() -> None:
            with self.batch_writer.begin() as conn:
                work(conn)

        await asyncio.get_running_loop().run_in_executor(self._batch_thread, run)

    async def close(self) -> None:
        self._batch_thread.shutdown(wait=True)
        self.batch_writer.dispose()
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()
