"""A batch sent to the writer process (store/batch_codec.py) is written exactly as the thread
writes the batch it came from: every column of every row, byte for byte."""

from __future__ import annotations

import sqlite3
from datetime import timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlmodel import SQLModel

from flowsvc.domain.evals import EvalJob, EvalJobStatus
from flowsvc.domain.runs import (
    Cost,
    Customer,
    EventType,
    FlowRun,
    Journal,
    RunEvent,
    Session,
    SessionStatus,
    run_values,
    step_values,
)
from flowsvc.store.batch_codec import NotEncodable, decode_batch, encode_batch
from flowsvc.store.journal_commit import JournalCommit
from flowsvc.store.journal_rows import JournalRows
from tests.store.test_event_rows import STAMP, a_finished_run

TABLES = ("sessions", "flow_runs", "session_steps", "run_events", "session_messages")


def a_session_of(run: FlowRun) -> Session:
    return Session(
        id=run.session_id,
        organisation_id=run.organisation_id,
        live_flow_id=run.flow_id,
        flow_version_id=run.flow_version_id,
        version=run.version,
        name='naïve "name"',
        status=SessionStatus.COMPLETED,
        inputs={"message": "hi", "n": [1, 2.5, None, True, {"deep": "ü"}]},
        variables={"x": 1e-7},
        messages=[],
        customer=Customer("c-1", "Ann", "ann@example.com", ""),
        expiration_seconds=60,
        # Another offset than UTC, and a time on the whole second (orjson writes no fraction).
        expires_at=(STAMP + timedelta(hours=1))
        .replace(microsecond=0)
        .astimezone(timezone(timedelta(hours=5, minutes=30))),
        created_at=STAMP,
        updated_at=STAMP + timedelta(seconds=9),
        costs=[Cost("model", "builtin/echo", 3, 4, 0.25)],
        artifact={"response": "said"},
        message_count=2,
    )


def a_journal() -> Journal:
    run = a_finished_run()
    session = a_session_of(run)
    job = EvalJob(
        id="ej-1",
        organisation_id=run.organisation_id,
        run_id=run.id,
        flow_id=run.flow_id,
        status=EvalJobStatus.COMPLETE,
        created_at=STAMP,
    )
    events = [
        RunEvent(
            seq=0,
            session_id=session.id,
            run_id=run.id,
            organisation_id=run.organisation_id,
            type=kind,
            time=STAMP + timedelta(microseconds=n),
            step_values=values,
            run_values=run_values(run) if kind is EventType.RUN_COMPLETED else None,
            session_step_id="" if values is None else values[0],
        )
        for n, (kind, values) in enumerate(
            [
                (EventType.STEP_STARTED, step_values(run.steps[0])),
                (EventType.STEP_COMPLETED, step_values(run.steps[1])),
                (EventType.RUN_COMPLETED, None),
            ]
        )
    ]
    events.append(
        RunEvent(
            seq=0,
            session_id=session.id,
            run_id=run.id,
            organisation_id=run.organisation_id,
            type=EventType.EVAL_COMPLETED,
            time=STAMP,
            eval_job=job,
        )
    )
    return Journal(
        session=session,
        session_is_new=True,
        epoch=1,
        new_runs=[run],
        new_steps=list(run.steps),
        events=events,
        new_messages=[m for m in (run.user_message, run.ai_message) if m is not None],
    )


def written(path: Path, batch: list[JournalRows]) -> dict[str, list[tuple[object, ...]]]:
    """`batch` committed by JournalCommit into a fresh SQLite file, and every row read back."""
    engine = create_engine(f"sqlite:///{path}")
    SQLModel.metadata.create_all(engine)
    with engine.begin() as conn:
        JournalCommit(engine.dialect, 10).write(conn, batch, None)
    engine.dispose()
    with sqlite3.connect(path) as db:
        # lease_expires_ms is the database clock's at the commit: the one column that may differ.
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in TABLES} | {
            "leases": db.execute("SELECT lease_expires_ms > 0 FROM sessions").fetchall()
        }


def test_a_decoded_batch_writes_every_column_as_the_thread_does(tmp_path: Path) -> None:
    by_thread = JournalRows.of(a_journal(), "owner-1")
    recorded = JournalRows.of(a_journal(), "owner-1")
    outbox, [by_process] = decode_batch(encode_batch(True, [recorded]))
    assert outbox is True
    thread_rows = written(tmp_path / "thread.db", [by_thread])
    process_rows = written(tmp_path / "process.db", [by_process])
    lease_column = [
        c[1] for c in sqlite3.connect(tmp_path / "thread.db").execute("PRAGMA table_info(sessions)")
    ].index("lease_expires_ms")
    for rows in (thread_rows, process_rows):
        rows["sessions"] = [r[:lease_column] + r[lease_column + 1 :] for r in rows["sessions"]]
    assert all(thread_rows[t] for t in TABLES)  # every table has rows to compare
    assert process_rows == thread_rows


def test_a_release_is_read_back_as_the_pair_it_was() -> None:
    rows = JournalRows(release=("se-1", 3))
    _, [sent] = decode_batch(encode_batch(False, [rows]))
    assert sent.release == ("se-1", 3)


def test_a_value_orjson_cannot_write_is_refused_before_it_is_sent() -> None:
    run = a_finished_run()
    run.body = {"huge": 2**70}
    rows = JournalRows.of(Journal(new_runs=[run]), "owner-1")
    with pytest.raises(NotEncodable):
        encode_batch(False, [rows])
