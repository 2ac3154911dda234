"""The real PostgreSQL for tests: a fresh database per use, dropped afterwards.

On this project's machines PostgreSQL listens on 127.0.0.1:5432 (user postgres, trust).
Where it does not, the PostgreSQL tests skip with one reason; with FLOWSVC_REQUIRE_POSTGRES=1
(as .ci/run sets it) they fail instead, so CI cannot pass without running them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import psycopg
import pytest

ADMIN = os.environ.get("FLOWSVC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
SKIP_REASON = f"PostgreSQL is not reachable at {ADMIN.rsplit('@', 1)[-1]}"


@cache
def reachable() -> bool:
    try:
        with psycopg.connect(ADMIN, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def require() -> None:
    """Skip (or, where PostgreSQL is required, fail) when it is not reachable."""
    if reachable():
        return
    if os.environ.get("FLOWSVC_REQUIRE_POSTGRES") == "1":
        pytest.fail(SKIP_REASON + " and FLOWSVC_REQUIRE_POSTGRES=1")
    pytest.skip(SKIP_REASON)


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new empty database; yields its URL (postgresql://...), dropped afterwards."""
    require()
    name = f"flowsvc_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
