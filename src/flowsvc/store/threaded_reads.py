"""Reads of an SQLite store on threads of their own: one hop from the event loop per
statement.

Through aiosqlite each statement costs several hops between the loop and the connection's
thread (execute, fetch, close, each a queue put and a wake-up the other way) plus
SQLAlchemy's greenlet bridge: a GetSession (three statements) cost ~3.6 ms of CPU on the
bench machine against ~0.4 ms for a bare gRPC call. Here a blocking connection from a
plain pool runs the statement and buffers its rows (type processing included) on a reader
thread; the loop gets a finished result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from sqlalchemy.engine import Connection, Engine, Result


class Reader(Protocol):
    """What store code reads through: an AsyncConnection, or a ThreadedRead."""

    async def execute(self, statement: Any, parameters: Any = None) -> Any: ...


class ThreadedRead:
    """One read's connection, checked out on first use (on a reader thread: opening one
    runs the pragmas, which may wait) and given back at the end of the read."""

    def __init__(
        self, engine: Engine, threads: ThreadPoolExecutor, returned: Callable[[], None]
    ) -> None:
        self._engine = engine
        self._threads = threads
        self._returned = returned  # called on the loop once the connection is back
        self._conn: Connection | None = None
        self._last: Future[Any] | None = None

    async def execute(self, statement: Any, parameters: Any = None) -> Result[Any]:
        frozen = await self._hop(lambda conn: conn.execute(statement, parameters).freeze())
        return frozen()  # type: ignore[no-any-return]

    async def execute_all(self, statements: Sequence[tuple[Any, Any]]) -> list[Result[Any]]:
        """Several statements in one hop: each hop costs the reader thread and the loop a
        hand-off of the interpreter lock, which under load outweighs the statement itself."""
        frozen = await self._hop(
            lambda conn: [conn.execute(query, params).freeze() for query, params in statements]
        )
        return [f() for f in frozen]

    async def _hop(self, work: Callable[[Connection], Any]) -> Any:
        """`work` on a reader thread, with the read's connection (checked out on first use)."""

        def run() -> Any:
            if self._conn is None:
                self._conn = self._engine.connect()
            return work(self._conn)

        self._last = self._threads.submit(run)
        return await asyncio.wrap_future(self._last)

    def close(self) -> None:
        """Give the connection back; a statement still running (its reader was cancelled)
        gives it back when it ends, on its thread, and only then is the read's slot free: a
        read admitted meanwhile would wait in the pool on a reader thread."""
        last = self._last
        if last is not None and not last.done():
            loop = asyncio.get_running_loop()

            def ended(_: Future[Any]) -> None:
                self._give_back()
                loop.call_soon_threadsafe(self._returned)

            last.add_done_callback(ended)
        else:
            self._give_back()
            self._returned()

    def _give_back(self) -> None:
        # Nothing to reset: the connection reads in autocommit (no transaction is open).
        if self._conn is not None:
            self._conn.close()
            self._conn = None


async def execute_all(conn: Reader, statements: Sequence[tuple[Any, Any]]) -> list[Result[Any]]:
    """Statements of one read that do not depend on each other: in one hop on a reader thread
    (SQLite), one after the other on an async connection (PostgreSQL)."""
    if isinstance(conn, ThreadedRead):
        return await conn.execute_all(statements)
    return [await conn.execute(statement, parameters) for statement, parameters in statements]
