"""Leases on PostgreSQL: what a replica does about another's writes stalled mid-statement."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from flowsvc.config import normalize_database_url
from flowsvc.store.database import Database
from flowsvc.store.lease_store import SqlLeases
from tests import postgres

LIMIT = 0.3  # seconds a transaction may wait on its process


@contextmanager
def a_copy_left_waiting(url: str, application_name: str) -> Iterator[psycopg.Connection]:
    """A connection whose COPY has begun and whose rows never come (its process frozen)."""
    conn = psycopg.connect(url, application_name=application_name)
    try:
        with conn.cursor() as cursor, cursor.copy("COPY scratch FROM STDIN"):
            yield conn
    except psycopg.OperationalError:
        pass  # ended by the server
    finally:
        conn.close()


def backends(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state = 'active' ORDER BY 1"
        ).fetchall()
    return [name for (name,) in found]


def test_the_service_s_writes_stalled_mid_statement_past_the_limit_are_ended() -> None:
    with postgres.fresh_database() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE scratch (a int)")
        db = Database(normalize_database_url(url), idle_transaction_limit=LIMIT)
        leases = SqlLeases(db, "replica", 10.0)
        try:
            with a_copy_left_waiting(url, "flowsvc"), a_copy_left_waiting(url, "psql"):
                assert leases.end_stalled_writes() == 0  # not waiting long enough yet
                time.sleep(LIMIT * 2)
                assert leases.end_stalled_writes() == 1
                assert backends(url) == ["psql"]  # not the service's: left alone
        finally:
            leases.close()
            asyncio.run(db.close())
