"""execute_all: statements of one read, in one hop on SQLite's reader threads, one after the
other on PostgreSQL; either way each statement's rows, in the order given."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from flowsvc.store.database import Database
from flowsvc.store.threaded_reads import ThreadedRead, execute_all
from tests.harness import sqlite_url
from tests.store.test_store_contract import database_url

__all__ = ["database_url"]  # the contract suite's backends


def test_each_statement_gets_its_own_rows_in_the_order_given(database_url: str) -> None:
    async def main() -> list[list[tuple[int, ...]]]:
        db = Database(database_url)
        try:
            async with db.read() as conn:
                results = await execute_all(
                    conn,
                    [
                        (text("SELECT 1 AS n UNION ALL SELECT 2 ORDER BY n"), None),
                        (text("SELECT :x AS n"), {"x": 7}),
                        (text("SELECT 3 AS n WHERE 1 = 0"), {}),
                    ],
                )
                return [[tuple(row) for row in result.all()] for result in results]
        finally:
            await db.close()

    assert asyncio.run(main()) == [[(1,), (2,)], [(7,)], []]


def test_on_sqlite_the_statements_go_to_a_reader_thread_together(tmp_path: Path) -> None:
    async def main() -> int:
        db = Database(sqlite_url(tmp_path / "reads.db"))
        try:
            async with db.read() as conn:
                assert isinstance(conn, ThreadedRead)
                hops = 0
                submit = conn._threads.submit

                def counted(*args: object, **kwargs: object) -> object:
                    nonlocal hops
                    hops += 1
                    return submit(*args, **kwargs)  # type: ignore[arg-type]

                conn._threads.submit = counted  # type: ignore[method-assign,assignment]
                try:
                    await execute_all(conn, [(text("SELECT 1"), None), (text("SELECT 2"), None)])
                finally:
                    conn._threads.submit = submit  # type: ignore[method-assign]
                return hops
        finally:
            await db.close()

    assert asyncio.run(main()) == 1
