"""A batch as the bytes the writer process is sent, and back: one orjson call on the event loop.

The loop is what paces W1 under load, and pickling a batch cost it ~43 us a journal (W1's
chain5 run), most of it datetimes and the step definitions inside event payloads, each a
call back into Python. orjson writes the same values in ~19 us, in C: datetimes as RFC 3339
text, enums as their values, tuples as lists, a step definition as its id and a finished
evaluation job not at all (what an event's stored payload holds of them: event_codec's
`reference`). The child reads them back as the values the commit binds: the datetimes of
datetime columns parsed again, payloads left as JSON values (the column's text is the same,
byte for byte, as from the values the loop had). A batch orjson cannot write (an integer past
64 bits, a string that is not UTF-8) is refused before it is sent, and committed by the
thread instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from flowsvc.store.column_types import UTCDateTime
from flowsvc.store.event_codec import event_row, reference
from flowsvc.store.journal_rows import JournalRows
from flowsvc.store.tables import (
    FlowRunRow,
    RunEventRow,
    SessionMessageRow,
    SessionRow,
    SessionStepRow,
)


class NotEncodable(Exception):
    """orjson cannot write some value of the batch."""


def _datetime_columns(row_class: Any) -> tuple[str, ...]:
    table = row_class.__table__
    return tuple(c.name for c in table.c if isinstance(c.type, UTCDateTime))


_TIMES = {
    "sessions": _datetime_columns(SessionRow),
    "runs": _datetime_columns(FlowRunRow),
    "steps": _datetime_columns(SessionStepRow),
}
_EVENT_TIMES = _datetime_columns(RunEventRow)
_MESSAGE_TIMES = _datetime_columns(SessionMessageRow)
_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS


def encode_batch(outbox: bool, batch: Sequence[JournalRows]) -> bytes:
    """Each journal as its row values and its events' rows, made here (on the loop: the
    events' records would each need a call back into Python)."""
    sent = [
        (
            rows.inserts,
            rows.updates,
            [event_row(e) for e in rows.events],
            rows.release,
            rows.deleted_steps,
            rows.messages,
        )
        for rows in batch
    ]
    try:
        return orjson.dumps((outbox, sent), default=reference, option=_OPTIONS)
    except orjson.JSONEncodeError as exc:
        raise NotEncodable(str(exc)) from exc


def decode_batch(data: bytes) -> tuple[bool, list[JournalRows]]:
    outbox, sent = orjson.loads(data)
    batch = []
    for inserts, updates, event_rows, release, deleted_steps, messages in sent:
        for by_table in (inserts, updates):
            for name, rows in by_table.items():
                _parse_times(rows, _TIMES[name])
        _parse_times(event_rows, _EVENT_TIMES)
        _parse_times(messages, _MESSAGE_TIMES)
        batch.append(
            JournalRows(
                inserts=inserts,
                updates=updates,
                event_rows=event_rows,
                release=None if release is None else tuple(release),
                deleted_steps=deleted_steps,
                messages=messages,
            )
        )
    return outbox, batch


def _parse_times(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    parse = datetime.fromisoformat
    for row in rows:
        for column in columns:
            value = row.get(column)
            if value is not None:
                row[column] = parse(value)
