"""Leases on PostgreSQL: what a replica does about another's writes stalled mid-statement."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import psycopg

from flowsvc.config import normalize_database_url
from flowsvc.store.database import Database
from flowsvc.store.dialects import replica_application_name
from flowsvc.store.lease_store import SqlLeases
from tests import postgres

LIMIT = 1.0  # seconds a transaction may wait on its process
ME = replica_application_name("me")


@contextmanager
def a_copy_left_waiting(url: str, name: str, *, blocking: int = 0) -> Iterator[None]:
    """A connection whose COPY has begun and whose rows never come (its process frozen);
    with `blocking`, it holds that advisory lock and another connection waits for it."""
    conn = psycopg.connect(url, application_name=name)
    waiter: threading.Thread | None = None
    try:
        if blocking:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (blocking,))

            def wait() -> None:
                with psycopg.connect(url) as other:
                    other.execute("SELECT pg_advisory_xact_lock(%s)", (blocking,))

            waiter = threading.Thread(target=wait)
            waiter.start()
        with conn.cursor() as cursor, cursor.copy("COPY scratch FROM STDIN"):
            yield
    except psycopg.OperationalError:
        pass  # ended by the server
    finally:
        conn.close()
        if waiter is not None:
            waiter.join(timeout=30)


def active(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state = 'active' AND wait_event = 'ClientRead' "
            "ORDER BY 1"
        ).fetchall()
    return [name for (name,) in found]


def test_another_replica_s_write_stalled_mid_statement_holding_a_lock_is_ended() -> None:
    with postgres.fresh_database() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE scratch (a int)")
        db = Database(
            normalize_database_url(url), idle_transaction_limit=LIMIT, application_name=ME
        )
        leases = SqlLeases(db, "me", 10.0)
        stalled = {  # the one to end last: the others are older, and left anyway
            "blocking nobody": (replica_application_name("slow"), 0),
            "this replica's own": (ME, 2),
            "not the service's": ("psql", 3),
            "frozen": (replica_application_name("frozen"), 1),
        }
        try:
            with ExitStack() as stack:
                for name, lock in stalled.values():
                    stack.enter_context(a_copy_left_waiting(url, name, blocking=lock))
                assert leases.end_stalled_writes() == 0  # not waiting long enough yet
                time.sleep(LIMIT * 1.5)
                assert leases.end_stalled_writes() == 1
                assert active(url) == sorted(
                    name for case, (name, _) in stalled.items() if case != "frozen"
                )
        finally:
            leases.close()
            asyncio.run(db.close())
