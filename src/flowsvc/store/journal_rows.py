"""A journal as the row values the writer commits, and which journals commit together.

Rows of sessions, runs, steps and messages are encoded when a journal is recorded (the engine
may go on changing its records); events carry their values frozen, and their rows are made on
the writer's thread. A batch merges rows so that each is written once, in its last state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flowsvc.domain.runs import EventType, Journal, RunEvent, Session
from flowsvc.store.run_codec import message_row, run_row, session_row, step_row

MAX_JOURNALS_PER_COMMIT = 256
_TABLES = ("sessions", "runs", "steps")


@dataclass
class JournalRows:
    """A journal turned into row values at the moment it was recorded."""

    inserts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    updates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # The events themselves (what they report is frozen in them); their rows are made by the
    # writer's thread, in the transaction that gives them their seqs.
    events: list[RunEvent] = field(default_factory=list)
    event_rows: list[dict[str, Any]] = field(default_factory=list)
    release: tuple[str, int] | None = None
    session: Session | None = None
    deleted_steps: list[str] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, journal: Journal, owner_id: str) -> JournalRows:
        session_rows: list[dict[str, Any]] = []
        if journal.session is not None and not journal.release and (
            journal.session_is_new or journal.epoch
        ):
            row = session_row(journal.session)
            row["lease_epoch"] = journal.epoch
            if journal.session_is_new:
                row["owner_id"] = owner_id
            session_rows.append(row)
        new = journal.session_is_new
        return cls(
            inserts={
                "sessions": session_rows if new else [],
                "runs": [run_row(r) for r in journal.new_runs],
                "steps": [step_row(s) for s in journal.new_steps],
            },
            updates={
                "sessions": [] if new else session_rows,
                "runs": [run_row(r) for r in journal.runs],
                "steps": [step_row(s) for s in journal.steps],
            },
            # Deltas ride along to be published with the journal's events, never stored.
            events=[e for e in journal.events if e.type is not EventType.STEP_DELTA],
            release=(journal.session.id, journal.epoch)
            if journal.release and journal.session is not None
            else None,
            session=journal.session,
            deleted_steps=list(journal.deleted_steps),
            messages=[message_row(journal.session.id, m) for m in journal.new_messages]
            if journal.session is not None
            else [],
        )


def merge_rows(
    batch: Sequence[JournalRows],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Last state of each row wins; a row inserted in this batch is inserted in its last state."""
    inserts: dict[str, dict[str, Any]] = {name: {} for name in _TABLES}
    updates: dict[str, dict[str, Any]] = {name: {} for name in _TABLES}
    for rows in batch:
        for name, values in rows.inserts.items():
            for row in values:
                inserts[name][row["id"]] = row
        for name, values in rows.updates.items():
            for row in values:
                inserted = inserts[name].get(row["id"])
                if inserted is not None:
                    # Inserted in its latest state, keeping what only an insert carries (the
                    # new session's owner).
                    inserts[name][row["id"]] = {**inserted, **row}
                else:
                    updates[name][row["id"]] = row
    return inserts, updates


def next_batch(
    pending: Sequence[tuple[JournalRows, asyncio.Future[None]]],
) -> Sequence[tuple[JournalRows, asyncio.Future[None]]]:
    """The journals to commit together next, in order: at most MAX_JOURNALS_PER_COMMIT, and
    never two lease epochs of one session. The session's update is fenced once, in its last
    state (merge_rows): a stale holder's journal riding along with the new holder's would pass
    the check and write its steps and messages."""
    epochs: dict[str, int] = {}
    for taken, (rows, _) in enumerate(pending[:MAX_JOURNALS_PER_COMMIT]):
        for row in (*rows.inserts.get("sessions", ()), *rows.updates.get("sessions", ())):
            if epochs.setdefault(row["id"], row["lease_epoch"]) != row["lease_epoch"]:
                return pending[: max(taken, 1)]
    return pending[:MAX_JOURNALS_PER_COMMIT]


def seqs_of_new_sessions(
    rows: list[dict[str, Any]], new_sessions: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Seqs for the event rows of sessions this batch inserts, from the counter in the row
    each is inserted with (raised to match): no other writer can see such a session before
    the commit, so its counter needs no statement (W1's runs on new sessions each saved an
    UPDATE ... RETURNING, ~80 us of a lone run's commit). The rows of other sessions, left
    to the database's counter."""
    if not new_sessions:
        return rows
    others: list[dict[str, Any]] = []
    raised: set[str] = set()
    for row in rows:
        sid = row["session_id"]
        session = new_sessions.get(sid)
        if session is None:
            others.append(row)
            continue
        if sid not in raised:
            # A copy: the journal's own row must stay as recorded, for a retry one by one.
            session = new_sessions[sid] = {**session}
            raised.add(sid)
        session["last_seq"] += 1
        row["seq"] = session["last_seq"]
    return others
