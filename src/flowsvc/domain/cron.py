"""Five-field cron expressions (minute hour day-of-month month day-of-week) and the ticks of
schedules, in a time zone.

Each field is `*`, a number, a range `a-b` or a list `a,b,...` of those, each with an optional
step `/n`; months and weekdays may be named (JAN..DEC, SUN..SAT), 0 and 7 are Sunday. When
both day fields are restricted a day matches either (Vixie cron). Local times that do not
exist (a DST gap) are skipped; a local time that happens twice runs once, at its first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    )
}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
MAX_YEARS = 5  # a valid expression that never matches (Feb 30) ends the search


class CronError(ValueError):
    pass


def _number(text: str, names: dict[str, int], low: int, high: int, what: str) -> int:
    value = names.get(text.upper()) if names else None
    if value is None:
        if not text.isdigit():
            raise CronError(f"{what}: {text!r} is not a number")
        value = int(text)
    if not low <= value <= high:
        raise CronError(f"{what}: {value} is outside {low}-{high}")
    return value


def _field(text: str, what: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise CronError(f"{what}: step {step_text!r} must be a whole number >= 1")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start = _number(a, names, low, high, what)
            end = _number(b, names, low, high, what)
            if start > end:
                raise CronError(f"{what}: range {base!r} runs backwards")
        else:
            start = _number(base, names, low, high, what)
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, expression: str) -> Cron:
        parts = expression.split()
        if len(parts) != 5:
            raise CronError(
                f"needs 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"
            )
        sets = [_field(p, *spec[:3], spec[3]) for p, spec in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset(d % 7 for d in sets[4])
        return cls(sets[0], sets[1], sets[2], sets[3], weekdays, parts[2] == "*", parts[4] == "*")

    def _day_matches(self, t: datetime) -> bool:
        day = t.day in self.days
        weekday = (t.weekday() + 1) % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return day and weekday
        return day or weekday

    def next_after(self, after: datetime, zone: tzinfo) -> datetime | None:
        """The first tick strictly after `after`, in UTC; None if there is none for years."""
        local = after.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0)
        t = local + timedelta(minutes=1)
        limit = t + timedelta(days=366 * MAX_YEARS)
        while t < limit:
            if t.month not in self.months:
                t = (t.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0)
                continue
            if not self._day_matches(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
                continue
            if t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
                continue
            if t.minute not in self.minutes:
                t += timedelta(minutes=1)
                continue
            utc = t.replace(tzinfo=zone).astimezone(UTC)
            if utc.astimezone(zone).replace(tzinfo=None) == t and utc > after:
                return utc
            t += timedelta(minutes=1)  # in a DST gap, or the second of a repeated hour
        return None


def zone_of(name: str) -> tzinfo:
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(f"unknown time zone {name[:64]!r}") from exc


def interval_next_after(anchor: datetime, seconds: int, after: datetime) -> datetime:
    """Ticks at anchor + k * seconds (k >= 1): the first strictly after `after`."""
    if after < anchor:
        return anchor + timedelta(seconds=seconds)
    k = int((after - anchor).total_seconds() // seconds) + 1
    tick = anchor + timedelta(seconds=k * seconds)
    while tick <= after:  # float rounding
        tick += timedelta(seconds=seconds)
    return tick
