"""UTCDateTime's fast bind for SQLite writes the text SQLAlchemy's own processing writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite

from flowsvc.store.tables import UTCDateTime

DIALECT = sqlite.dialect()
MOMENTS = [
    datetime(2026, 12, 3, 18, 25, 0, 81606, tzinfo=UTC),
    datetime(2026, 12, 3, 18, 25, 0, 0, tzinfo=UTC),  # whole second: no fraction from orjson
    datetime(2026, 12, 3, 18, 25, 0, 5, tzinfo=UTC),
    datetime(2026, 1, 1, 1, 1, 1, 999999, tzinfo=timezone(timedelta(hours=2))),
    datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
]


def slow_path(value: datetime) -> str:
    bind = UTCDateTime().dialect_impl(DIALECT).bind_processor(DIALECT)
    assert bind is not None
    return bind(value)  # type: ignore[no-any-return]


@pytest.mark.parametrize("moment", MOMENTS, ids=str)
def test_the_fast_bind_writes_what_sqlalchemy_writes(moment: datetime) -> None:
    fast = UTCDateTime().fast_bind_processor(DIALECT)
    assert fast(moment) == slow_path(moment)


def test_the_fast_bind_passes_null_on() -> None:
    assert UTCDateTime().fast_bind_processor(DIALECT)(None) is None
