"""What differs between SQLite and PostgreSQL beneath the store: how each connection is set up
(SQLite's pragmas and BEGIN IMMEDIATE, PostgreSQL's limit on idle transactions), how a
replica's connections are named, the database's clock in SQL and the driver's bind marker."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine


def sqlite_pragmas(engine: AsyncEngine | Engine, synchronous: str, immediate: bool) -> None:
    target = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @event.listens_for(target, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # The busy timeout first: switching a new file to WAL takes a lock too, and a second
        # process opening it at that moment (a CLI beside the server) must wait, not fail.
        cursor.execute("PRAGMA busy_timeout=10000")
        # Switching a new file to WAL can answer "locked" at once, without waiting, while
        # another process (a CLI beside the starting server) creates or migrates it.
        for attempt in range(200):
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 199:
                    raise
                time.sleep(0.05)
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # SQLite's temporary files in memory: on disk it made, unlinked and wrote one in
        # /var/tmp every few commits of the batch writer (which statement needs it was not
        # traced; the pragma covers all of them).
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.close()

    if not immediate:
        return  # readers run each SELECT in autocommit: no BEGIN/ROLLBACK round trips

    @event.listens_for(target, "begin")
    def on_begin(conn: Connection) -> None:
        # Writers take the write lock up front, so a second process waits its turn
        # instead of failing when a deferred transaction tries to upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def limit_idle_transactions(engine: AsyncEngine | Engine, seconds: float) -> None:
    """PostgreSQL ends a transaction of ours left idle past `seconds`, closing its connection
    and releasing its locks. A replica frozen or cut off between a statement and its COMMIT
    would otherwise hold the rows it locked (its session's, against every other replica's
    claim) until it woke; its own writes were fenced by then anyway."""
    target = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    setting = f"SET idle_in_transaction_session_timeout = {max(1, round(seconds * 1000))}"

    @event.listens_for(target, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Outside a transaction, so that no rollback undoes it; once per connection.
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        cursor = dbapi_connection.cursor()
        cursor.execute(setting)
        cursor.close()
        dbapi_connection.autocommit = autocommit


# How PostgreSQL lists this service's connections (pg_stat_activity.application_name): a
# server's as "flowsvc:<replica id>", so that a replica can tell the others' transactions
# stalled mid-statement from its own (lease_store.py); other commands' as "flowsvc".
APPLICATION_NAME = "flowsvc"
REPLICA_PREFIX = "flowsvc:"
# PostgreSQL takes the idle limit in milliseconds, at most INT_MAX of them.
MOST_IDLE_SECONDS = 2_000_000


def replica_application_name(replica_id: str) -> str:
    return REPLICA_PREFIX + replica_id


def now_ms_sql(dialect_name: str) -> str:
    """The database's clock in Unix milliseconds: leases are timed by one clock for all."""
    if dialect_name == "sqlite":
        return "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"


def driver_placeholder(dialect_name: str) -> str:
    """The bind marker of raw driver SQL: sqlite3's qmark, psycopg's format style."""
    return "?" if dialect_name == "sqlite" else "%s"
