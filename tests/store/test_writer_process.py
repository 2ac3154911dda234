"""SQLite's batch commits in a writer process (store/writer_process.py): what the child commits,
what becomes of a batch when it dies, and that it never outlives the server. The whole store
contract also runs through it (test_store_contract.py, `sqlite-writer-process`); that a
killed server takes it along is in test_crash_recovery.py."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from flowsvc.domain.errors import Unavailable
from flowsvc.domain.model import FlowVersion
from flowsvc.domain.runs import EventType, Journal
from flowsvc.store.writer_process import WriterProcess
from tests.harness import sqlite_url
from tests.store.test_store_contract import (
    BY_PROCESS,
    Replica,
    a_run,
    a_session,
    a_version,
    opening,
    replica,
    seqs,
)


def on_sqlite_by_process(
    tmp_path: Path, body: Callable[[Replica, Replica], Awaitable[None]]
) -> None:
    """`body` with a replica whose batches go through a writer process, and a plain one."""
    url = sqlite_url(tmp_path / "writer.db")

    async def main() -> None:
        async with replica(url + BY_PROCESS) as a, replica(url) as b:
            await body(a, b)

    asyncio.run(main())


async def until(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never came true")


def test_a_batch_is_committed_by_the_child_with_its_seqs(tmp_path: Path) -> None:
    async def body(a: Replica, b: Replica) -> None:
        process = a.writer._process
        assert process is not None
        version = await a_version(a)
        sessions = [a_session(version) for _ in range(5)]
        before = process.commits
        await asyncio.gather(
            *(
                a.runs.record(opening(s, a_run(s), EventType.RUN_STARTED, EventType.STEP_COMPLETED))
                for s in sessions
            )
        )
        assert process.commits == before + 1  # one batch, committed by the child
        for s in sessions:
            assert await seqs(b, s.id) == [1, 2]  # read by another connection

    on_sqlite_by_process(tmp_path, body)


def test_a_batch_held_by_a_child_that_dies_is_unavailable_and_not_retried(
    tmp_path: Path,
) -> None:
    async def body(a: Replica, b: Replica) -> None:
        process = a.writer._process
        assert process is not None and process.pid is not None
        version = await a_version(a)
        session = a_session(version)
        run = a_run(session)
        os.kill(process.pid, signal.SIGSTOP)  # it takes the batch only after it is dead
        held = a.runs.record(
            Journal(session=session, session_is_new=True, epoch=1, new_runs=[run])
        )
        await until(lambda: not a.writer._pending)  # taken, sent, not answered
        assert not held.done()
        os.kill(process.pid, signal.SIGKILL)
        with pytest.raises(Unavailable):
            await held
        # Never committed by anyone else meanwhile: not retried behind the dead child's back.
        assert await b.runs.get_session("acme", session.id) is None

    on_sqlite_by_process(tmp_path, body)


async def committed_after_the_idle_child_ends(
    a: Replica, b: Replica, sig: signal.Signals
) -> tuple[WriterProcess, FlowVersion]:
    """Send the idle child `sig`; once it is gone, a journal is committed all the same (by
    the thread)."""
    process = a.writer._process
    assert process is not None and process.pid is not None
    version = await a_version(a)
    os.kill(process.pid, sig)
    await until(lambda: not process.ready)
    session = a_session(version)
    await a.runs.record(Journal(session=session, session_is_new=True, epoch=1))
    assert await b.runs.get_session("acme", session.id) is not None
    return process, version


def test_after_the_child_dies_batches_go_on_and_a_new_child_takes_them(tmp_path: Path) -> None:
    async def body(a: Replica, b: Replica) -> None:
        process, version = await committed_after_the_idle_child_ends(a, b, signal.SIGKILL)
        await process.started()  # the batch above started a new one
        committed = process.commits
        second = a_session(version)
        await a.runs.record(Journal(session=second, session_is_new=True, epoch=1))
        assert process.commits == committed + 1
        assert await b.runs.get_session("acme", second.id) is not None

    on_sqlite_by_process(tmp_path, body)


def test_a_child_ended_by_sigterm_is_not_replaced_and_the_thread_commits(tmp_path: Path) -> None:
    async def body(a: Replica, b: Replica) -> None:
        # Idle, it ends at once, cleanly.
        process, version = await committed_after_the_idle_child_ends(a, b, signal.SIGTERM)
        await asyncio.sleep(1.2)  # past the pause after a child's end
        await a.runs.record(Journal(session=a_session(version), session_is_new=True, epoch=1))
        assert process.pid is None and process.commits == 0

    on_sqlite_by_process(tmp_path, body)
