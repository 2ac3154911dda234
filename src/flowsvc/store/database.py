"""Engines and transactions. SQLite (WAL) by default; the same code serves PostgreSQL."""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from flowsvc.domain.errors import Unavailable
from flowsvc.store.dialects import (
    APPLICATION_NAME,
    MOST_IDLE_SECONDS,
    limit_idle_transactions,
    sqlite_pragmas,
)
from flowsvc.store.threaded_reads import Reader, ThreadedRead

MIGRATIONS = Path(__file__).parent / "migrations"


def takes_a_request_id(exc: IntegrityError) -> bool:
    """The row was refused by a request-id constraint (uq_*_request: another request
    committed that id), not by any other key or check."""
    constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
    if constraint is not None:  # PostgreSQL names the constraint
        return str(constraint).startswith("uq_") and str(constraint).endswith("_request")
    said = str(exc.orig).strip()  # SQLite names the columns
    return said.startswith("UNIQUE constraint failed:") and said.endswith(".request_id")


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


# JSON columns are on the hot path (event payloads): orjson encodes them several times faster.
JSON_OPTIONS: dict[str, Any] = {"json_serializer": _json_text, "json_deserializer": orjson.loads}


# Any number to name the migration lock by: replicas starting together take turns.
MIGRATION_LOCK = 0x666C6F77  # "flow"


def _run_migrations(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Alembic reads its scripts between statements: a migration is not an abandoned
        # transaction, however long it sits idle (a server limits its own to half a lease).
        connection.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")
        # Held to the end of the migration's transaction; a replica that waited finds the
        # schema at head and changes nothing.
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


class SingleProcessOnly(OSError):
    pass


@contextmanager
def unavailable_when_unreachable() -> Iterator[None]:
    """The database going away (down, restarting, connection cut) is the caller's
    UNAVAILABLE, never INTERNAL: the same call succeeds once the database is back."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        raise Unavailable("the database is unavailable; try again") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise Unavailable("the database connection was lost; try again") from exc
        raise
    except (ConnectionError, psycopg.OperationalError) as exc:
        raise Unavailable("the database is unavailable; try again") from exc
    except PoolTimeout as exc:  # every connection busy for the pool's whole timeout
        raise Unavailable("the database has no connection free; try again") from exc


SQLITE_READERS = 4
POSTGRES_READERS = 8


class Database:
    """One writer connection behind a lock (SQLite has one writer anyway) and a reader pool."""

    def __init__(
        self,
        url: str,
        *,
        sqlite_synchronous: str = "NORMAL",
        read_pool_size: int = 0,
        idle_transaction_limit: float | None = None,
        application_name: str = APPLICATION_NAME,
    ) -> None:
        """idle_transaction_limit: seconds PostgreSQL lets a transaction of this process's
        wait between statements before ending it (none by default; a server passes half its
        lease)."""
        parsed = make_url(url)
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        limit = idle_transaction_limit
        if self.is_sqlite or limit is None or not 0 < limit <= MOST_IDLE_SECONDS:
            limit = None  # none, or none worth setting (an infinite lease)
        self.idle_transaction_limit = limit
        self.application_name = application_name
        tagged: dict[str, Any] = {"connect_args": {"application_name": application_name}}
        self._tagged = {} if self.is_sqlite else tagged
        if read_pool_size <= 0:
            # SQLite's readers are threads sharing this interpreter's lock with the event loop
            # and the writer: past 4 they cost more in hand-offs than they add (W1, W2 and
            # GetSession/ListSessions at 16 callers, 2 cores: BENCHMARKS.md, fifth session).
            read_pool_size = SQLITE_READERS if self.is_sqlite else POSTGRES_READERS
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.writer = create_async_engine(url, pool_size=1, max_overflow=0, **JSON_OPTIONS)
            sqlite_pragmas(self.writer, sqlite_synchronous, immediate=True)
        else:
            self.writer = create_async_engine(
                url,
                pool_size=4,
                max_overflow=4,
                pool_pre_ping=True,
                isolation_level="READ COMMITTED",
                **tagged,
                **JSON_OPTIONS,
            )
            if limit is not None:
                limit_idle_transactions(self.writer, limit)
            # Reads are single statements: in autocommit they cost no BEGIN and no ROLLBACK.
            self.reader: AsyncEngine | None = create_async_engine(
                url,
                pool_size=read_pool_size,
                max_overflow=4,
                pool_pre_ping=True,
                isolation_level="AUTOCOMMIT",
                **tagged,
                **JSON_OPTIONS,
            )
        self.dialect_name = parsed.get_backend_name()
        # SQLite has one writer anyway; PostgreSQL takes concurrent writers.
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if self.is_sqlite else None
        # Batches of the hot path are committed by one thread on one blocking connection:
        # a whole transaction is then a single hop from the event loop, not one per statement.
        self.sync_url = parsed.set(
            drivername="sqlite" if self.is_sqlite else "postgresql+psycopg"
        ).render_as_string(hide_password=False)
        self._sqlite_synchronous = sqlite_synchronous
        self.batch_writer: Engine = self.sync_engine()
        self._batch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowsvc-writer")
        self._batch_conn: Connection | None = None  # SQLite's, held by that thread
        self._closed = False
        # SQLite reads run on threads of their own, a fixed pool of blocking connections
        # (threaded_reads.py): callers queue for one rather than open extras under load.
        self._sync_reader: Engine | None = None
        self._read_threads: ThreadPoolExecutor | None = None
        self._read_slots: asyncio.Semaphore | None = None
        if self.is_sqlite:
            self.reader = None
            self._sync_reader = create_engine(
                self.sync_url,
                pool_size=read_pool_size,
                max_overflow=0,
                pool_reset_on_return=None,
                # Opened on one reader thread, used by the next, given back on the loop.
                connect_args={"check_same_thread": False},
                **JSON_OPTIONS,
            )
            sqlite_pragmas(self._sync_reader, sqlite_synchronous, immediate=False)
            self._read_threads = ThreadPoolExecutor(
                max_workers=read_pool_size, thread_name_prefix="flowsvc-reader"
            )
            self._read_slots = asyncio.Semaphore(read_pool_size)

    def sync_engine(self) -> Engine:
        """A blocking engine of one connection, for a thread of its own."""
        engine = create_engine(
            self.sync_url,
            pool_size=1,
            max_overflow=0,
            pool_pre_ping=True,
            **self._tagged,
            **JSON_OPTIONS,
        )
        if self.is_sqlite:
            sqlite_pragmas(engine, self._sqlite_synchronous, immediate=True)
        elif self.idle_transaction_limit is not None:
            limit_idle_transactions(engine, self.idle_transaction_limit)
        return engine

    @property
    def sqlite_file(self) -> str | None:
        """The SQLite database's file, if it has one another process could open."""
        database = make_url(self.url).database
        if not self.is_sqlite or not database or database == ":memory:":
            return None
        return database

    def hold_exclusively(self) -> None:
        """SQLite is for one server process: a second one on the same file refuses to start.
        The lock is an flock on a file beside the database, released when the process ends,
        however it ends (the database file itself is never opened outside SQLite)."""
        database = self.sqlite_file
        if database is None:
            return
        path = Path(database).resolve().with_suffix(Path(database).suffix + ".serve-lock")
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise SingleProcessOnly(
                f"another flowsvc server already serves {database}: SQLite is for one server "
                "process; run several replicas on PostgreSQL (--database-url postgresql://...)"
            ) from None
        self._serve_lock = handle

    async def migrate(self) -> None:
        for attempt in range(100):
            try:
                async with self.write() as conn:
                    await conn.run_sync(_run_migrations)
                return
            except Unavailable as exc:
                # SQLite: a second process migrating the same new file at the same moment.
                if not self.is_sqlite or "locked" not in str(exc.__cause__) or attempt == 99:
                    raise
                await asyncio.sleep(0.1)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        with unavailable_when_unreachable():
            if self._write_lock is None:
                async with self.writer.begin() as conn:
                    yield conn
                return
            async with self._write_lock, self.writer.begin() as conn:
                yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Reader]:
        with unavailable_when_unreachable():
            if self._read_threads is not None:
                assert self._sync_reader is not None and self._read_slots is not None
                # At most as many reads as connections (and threads): a read that holds a
                # connection always finds a thread for its next statement, never one blocked
                # in the pool waiting for a connection.
                slots = self._read_slots
                await slots.acquire()
                threaded = ThreadedRead(self._sync_reader, self._read_threads, slots.release)
                try:
                    yield threaded
                finally:
                    threaded.close()  # frees the slot once the connection is back
                return
            assert self.reader is not None
            async with self.reader.connect() as conn:
                yield conn

    async def write_batch(self, work: Callable[[Connection], None]) -> None:
        """Run `work` in one transaction on the batch writer's thread."""
        with unavailable_when_unreachable():
            await asyncio.get_running_loop().run_in_executor(
                self._batch_thread, self.write_batch_here, work
            )

    def write_batch_here(self, work: Callable[[Connection], None]) -> None:
        """`work` in one transaction on this thread: the batch writer's (write_batch), or
        the writer process's own. SQLite's connection is kept there between batches:
        a local file needs no liveness ping, and a checkout, ping and return a commit were
        ~0.1 ms of the ~1.1 ms a lone run's commit costs that thread. After a failure it goes
        back to its pool (rolled back; dropped by SQLAlchemy if the error says it is broken)
        and the next batch checks one out again, as every batch did before. PostgreSQL's goes
        back to its pool after every batch, pinged on checkout: a server restart leaves dead
        connections behind."""
        if not self.is_sqlite:
            with self.batch_writer.begin() as conn:
                work(conn)
            return
        if self._batch_conn is None:
            self._batch_conn = self.batch_writer.connect()
        try:
            with self._batch_conn.begin():
                work(self._batch_conn)
        except BaseException:
            self._close_batch_conn()
            raise

    def _close_batch_conn(self) -> None:
        if self._batch_conn is not None:
            self._batch_conn.close()
            self._batch_conn = None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        lock = getattr(self, "_serve_lock", None)
        if lock is not None:
            lock.close()
        # On the thread that uses it, after the batches queued before.
        self._batch_thread.submit(self._close_batch_conn)
        self._batch_thread.shutdown(wait=True)
        self.batch_writer.dispose()
        await self.writer.dispose()
        if self.reader is not None:
            await self.reader.dispose()
        if self._read_threads is not None and self._sync_reader is not None:
            self._read_threads.shutdown(wait=True)
            self._sync_reader.dispose()
