"""Response timestamps: the fast conversion agrees with protobuf's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from flowsvc.api.convert import timestamp

moments = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
) | st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1))


@given(moments, st.integers(min_value=-720, max_value=720))
def test_timestamp_matches_protobufs_from_datetime(moment: datetime, offset_minutes: int) -> None:
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    expected = Timestamp()
    expected.FromDatetime(moment)
    got = timestamp(moment)
    assert got is not None
    assert (got.seconds, got.nanos) == (expected.seconds, expected.nanos)


def test_no_time_is_no_timestamp() -> None:
    assert timestamp(None) is None
