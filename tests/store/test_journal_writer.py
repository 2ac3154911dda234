"""Which commits SQLite's batches, the batch writer's thread or the writer process: chosen by the
recent batches' size, slowly, so that steady load does not flip it back and forth."""

from __future__ import annotations

from pathlib import Path

from flowsvc.store.database import Database
from flowsvc.store.journal_writer import JournalWriter
from flowsvc.store.writer_process import WriterProcess
from tests.harness import sqlite_url

PROCESS_FROM = 4


def a_writer(tmp_path: Path) -> JournalWriter:
    url = sqlite_url(tmp_path / "choice.db")
    # The process is never started: the choice is the writer's alone.
    return JournalWriter(
        Database(url), "owner", 10, WriterProcess(url, "NORMAL", 10), PROCESS_FROM
    )


def choices(writer: JournalWriter, sizes: list[int]) -> list[bool]:
    return [writer._by_process(size) for size in sizes]


def test_a_lone_caller_keeps_the_thread(tmp_path: Path) -> None:
    writer = a_writer(tmp_path)
    assert not any(choices(writer, [1, 0] * 500))  # its runs, and its release sweeps


def test_load_takes_the_process_within_a_few_dozen_batches(tmp_path: Path) -> None:
    writer = a_writer(tmp_path)
    assert choices(writer, [13] * 30)[-1]


def test_release_sweeps_under_load_leave_the_process_on(tmp_path: Path) -> None:
    writer = a_writer(tmp_path)
    choices(writer, [6] * 200)
    assert all(choices(writer, [0] * 100 + [6, 2, 1, 6, 1, 9] * 50))


def test_the_process_is_let_go_once_batches_stay_small(tmp_path: Path) -> None:
    writer = a_writer(tmp_path)
    choices(writer, [6] * 200)
    assert not choices(writer, [1] * 100)[-1]
