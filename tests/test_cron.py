"""The cron parser and tick arithmetic (pure functions of the domain)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from flowsvc.domain.cron import Cron, CronError, interval_next_after, zone_of


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def ticks(expr: str, start: datetime, n: int, zone: str = "") -> list[datetime]:
    cron, tz, out, t = Cron.parse(expr), zone_of(zone), [], start
    for _ in range(n):
        t = cron.next_after(t, tz)  # type: ignore[assignment]
        out.append(t)
    return out


def test_fields_steps_ranges_lists_and_names() -> None:
    assert ticks("*/15 * * * *", at(2026, 1, 1, 0, 7), 3) == [
        at(2026, 1, 1, 0, 15), at(2026, 1, 1, 0, 30), at(2026, 1, 1, 0, 45)
    ]
    assert ticks("0 9-10 * * MON-FRI", at(2026, 1, 2, 10, 0), 3) == [  # Friday 10:00 passed
        at(2026, 1, 5, 9, 0), at(2026, 1, 5, 10, 0), at(2026, 1, 6, 9, 0)
    ]
    assert ticks("30 12 1 JAN,jul *", at(2026, 2, 1), 2) == [
        at(2026, 7, 1, 12, 30), at(2027, 1, 1, 12, 30)
    ]
    assert ticks("0 0 * * 7", at(2026, 1, 1), 1) == [at(2026, 1, 4)]  # 7 is Sunday too
    assert ticks("5/20 * * * *", at(2026, 1, 1), 3) == [
        at(2026, 1, 1, 0, 5), at(2026, 1, 1, 0, 25), at(2026, 1, 1, 0, 45)
    ]


def test_restricted_day_fields_match_either() -> None:
    # The 13th, or any Friday (Vixie cron).
    got = ticks("0 0 13 * FRI", at(2026, 2, 1), 3)
    assert got == [at(2026, 2, 6), at(2026, 2, 13), at(2026, 2, 20)]


def test_strictly_after_and_never() -> None:
    assert Cron.parse("0 0 * * *").next_after(at(2026, 1, 1), UTC) == at(2026, 1, 2)
    assert Cron.parse("0 0 30 2 *").next_after(at(2026, 1, 1), UTC) is None


def test_time_zones_and_daylight_saving() -> None:
    paris = ZoneInfo("Europe/Paris")
    # 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer.
    assert ticks("0 9 * * *", at(2026, 3, 28, 12), 2, "Europe/Paris") == [
        at(2026, 3, 29, 7), at(2026, 3, 30, 7)
    ]
    # 02:30 does not exist on 2026-03-29 in Paris: skipped; it happens twice on 10-25: once.
    gap = Cron.parse("30 2 * * *").next_after(datetime(2026, 3, 28, 3, tzinfo=paris), paris)
    assert gap == datetime(2026, 3, 30, 2, 30, tzinfo=paris)
    twice = ticks("30 2 * * *", datetime(2026, 10, 24, 3, tzinfo=paris), 2, "Europe/Paris")
    assert twice == [at(2026, 10, 25, 0, 30), at(2026, 10, 26, 1, 30)]


@pytest.mark.parametrize(
    "expr",
    ["", "* * * *", "* * * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *",
     "* * * * 8", "*/0 * * * *", "5-1 * * * *", "a * * * *", "* * * FOO *", "1,,2 * * * *"],
)
def test_bad_expressions_say_what_is_wrong(expr: str) -> None:
    with pytest.raises(CronError):
        Cron.parse(expr)


def test_zones_and_intervals() -> None:
    with pytest.raises(CronError):
        zone_of("Mars/Olympus")
    anchor = at(2026, 1, 1)
    assert interval_next_after(anchor, 2, anchor) == anchor + timedelta(seconds=2)
    assert interval_next_after(anchor, 2, anchor + timedelta(seconds=3)) == anchor + timedelta(
        seconds=4
    )
    assert interval_next_after(anchor, 2, anchor - timedelta(days=1)) == anchor + timedelta(
        seconds=2
    )
