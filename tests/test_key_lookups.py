"""How often the server reads an API key: one read for every call that finds it stale at
once, and a revoked key still refused once its cached record is stale."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from flowsvc.config import normalize_database_url
from flowsvc.domain import keys as keys_module
from flowsvc.domain.errors import Unauthenticated
from flowsvc.domain.keys import Keys
from flowsvc.domain.model import ApiKey
from flowsvc.store.database import Database
from flowsvc.store.sql_store import SqlStore
from tests.harness import sqlite_url


class CountingStore(SqlStore):
    """The real store, counting its reads of keys."""

    reads = 0

    async def get_key(self, key_id: str) -> ApiKey | None:
        self.reads += 1
        return await super().get_key(key_id)


def _with_store(tmp_path: Path, test: Callable[[CountingStore], Awaitable[None]]) -> None:
    async def run() -> None:
        database = Database(normalize_database_url(sqlite_url(tmp_path / "keys.db")))
        try:
            await database.migrate()
            await test(CountingStore(database))
            # What the calls left running (last_used_at writes) ends before the database.
            others = asyncio.all_tasks() - {asyncio.current_task()}
            await asyncio.gather(*others, return_exceptions=True)
        finally:
            await database.close()

    asyncio.run(run())


def test_calls_that_find_a_key_stale_at_once_read_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys_module, "CACHE_SECONDS", 0.0)  # every call finds it stale

    async def test(store: CountingStore) -> None:
        keys = Keys(store)
        minted = await keys.mint("acme")
        calls = [keys.authenticate(minted.secret, None) for _ in range(16)]
        principals = await asyncio.gather(*calls)
        assert {p.organisation_id for p in principals} == {"acme"}
        assert store.reads == 1
        await keys.authenticate(minted.secret, None)  # after that read: a read of its own
        assert store.reads == 2

    _with_store(tmp_path, test)


def test_a_cancelled_call_leaves_the_read_to_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys_module, "CACHE_SECONDS", 0.0)

    async def test(store: CountingStore) -> None:
        keys = Keys(store)
        minted = await keys.mint("acme")
        first = asyncio.ensure_future(keys.authenticate(minted.secret, None))
        await asyncio.sleep(0)  # its read is under way
        second = asyncio.ensure_future(keys.authenticate(minted.secret, None))
        await asyncio.sleep(0)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        assert (await second).organisation_id == "acme"
        assert store.reads == 1

    _with_store(tmp_path, test)


def test_a_key_revoked_elsewhere_is_refused_once_its_record_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys_module, "CACHE_SECONDS", 0.05)

    async def test(store: CountingStore) -> None:
        server, cli = Keys(store), Keys(store)  # two processes' views of one database
        minted = await cli.mint("acme")
        await server.authenticate(minted.secret, None)  # verified, and its secret kept
        assert await cli.revoke(minted.record.id)
        await asyncio.sleep(0.06)
        refused: list[Any] = await asyncio.gather(
            *(server.authenticate(minted.secret, None) for _ in range(4)),
            return_exceptions=True,
        )
        assert all(isinstance(r, Unauthenticated) for r in refused)
        assert {str(r) for r in refused} == {"API key revoked"}

    _with_store(tmp_path, test)
