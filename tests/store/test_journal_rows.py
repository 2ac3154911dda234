"""Seqs for the events of sessions a batch inserts: counted from the row each is inserted
with, in order; other sessions' events are left to the database's counter."""

from __future__ import annotations

from typing import Any

from flowsvc.store.journal_rows import seqs_of_new_sessions


def _events(*session_ids: str) -> list[dict[str, Any]]:
    return [{"session_id": sid, "seq": 0} for sid in session_ids]


def test_events_of_a_new_session_count_on_from_its_row_and_raise_it() -> None:
    inserted = {"new": {"id": "new", "last_seq": 0}, "forked": {"id": "forked", "last_seq": 7}}
    rows = _events("new", "forked", "new", "new", "forked")
    assert seqs_of_new_sessions(rows, inserted) == []
    assert [r["seq"] for r in rows] == [1, 8, 2, 3, 9]
    assert inserted["new"]["last_seq"] == 3 and inserted["forked"]["last_seq"] == 9


def test_events_of_stored_sessions_are_left_to_the_database_in_order() -> None:
    rows = _events("stored", "new", "other")
    left = seqs_of_new_sessions(rows, {"new": {"id": "new", "last_seq": 0}})
    assert left == [rows[0], rows[2]] and left[0]["seq"] == left[1]["seq"] == 0
    assert rows[1]["seq"] == 1


def test_the_journals_own_session_row_is_not_changed() -> None:
    """A batch that fails is committed again journal by journal, from the rows as recorded:
    the batch raises a copy."""
    recorded = {"id": "new", "last_seq": 0}
    inserted = {"new": recorded}
    seqs_of_new_sessions(_events("new", "new"), inserted)
    assert recorded["last_seq"] == 0 and inserted["new"]["last_seq"] == 2
