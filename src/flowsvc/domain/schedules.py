"""Schedules: the use cases behind ScheduleService, and when a schedule ticks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from flowsvc.domain.cron import Cron, CronError, interval_next_after, zone_of
from flowsvc.domain.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound
from flowsvc.domain.flow_runs import FlowRuns
from flowsvc.domain.flows import MAX_REQUEST_ID_CHARS
from flowsvc.domain.idempotency import request_digest
from flowsvc.domain.ids import new_id, require_id
from flowsvc.domain.limits import Limits
from flowsvc.domain.paging import Listed, Page, listed, parse_page
from flowsvc.domain.run_requests import RunOptions, check_inputs, check_json_size, check_overrides
from flowsvc.domain.runs import FlowRun

MAX_INTERVAL = 366 * 86_400
NEXT_RUN_TIMES = 5
UPDATABLE = ("cron", "time_zone", "interval_seconds", "body", "options", "overlap_policy",
             "catch_up")


class Overlap(StrEnum):
    SKIP = "SKIP"
    ENQUEUE = "ENQUEUE"


class CatchUp(StrEnum):
    LATEST = "LATEST"
    NONE = "NONE"


@dataclass(slots=True)
class Schedule:
    id: str
    organisation_id: str
    flow_id: str
    cron: str
    time_zone: str
    interval_seconds: int
    body: dict[str, Any]
    options: RunOptions
    overlap: Overlap
    catch_up: CatchUp
    paused: bool
    next_tick_at: datetime | None
    created_at: datetime
    updated_at: datetime
    request_id: str = ""
    request_digest: str = ""
    next_run_times: list[datetime] = field(default_factory=list)

    def next_after(self, after: datetime) -> datetime | None:
        if self.cron:
            return Cron.parse(self.cron).next_after(after, zone_of(self.time_zone))
        return interval_next_after(self.created_at, self.interval_seconds, after)

    def upcoming(self, n: int = NEXT_RUN_TIMES) -> list[datetime]:
        if self.paused or self.next_tick_at is None:
            return []
        out = [self.next_tick_at]
        while len(out) < n and (t := self.next_after(out[-1])) is not None:
            out.append(t)
        return out


class ScheduleStore(Protocol):
    async def create_schedule(self, s: Schedule) -> Schedule | None: ...
    async def schedule_by_request(self, org: str, request_id: str) -> Schedule | None: ...
    async def get_schedule(self, org: str, schedule_id: str) -> Schedule | None: ...
    async def list_schedules(self, org: str, flow_id: str, page: Page) -> list[Schedule]: ...
    async def save_schedule(self, s: Schedule) -> bool: ...
    async def delete_schedule(self, org: str, schedule_id: str) -> bool: ...


def tick_request_id(schedule_id: str, tick: datetime) -> str:
    """The request_id of a tick's run: a tick tried twice (a crash between its run's commit
    and the schedule moving on, two replicas) starts one run."""
    return f"schedule:{schedule_id}:{tick.strftime('%Y%m%dT%H%M%S.%fZ')}"


class Schedules:
    def __init__(
        self,
        store: ScheduleStore,
        runs: FlowRuns,
        limits: Limits,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._runs = runs
        self._limits = limits
        self._clock = clock

    async def _check(self, s: Schedule, prefix: str) -> None:
        problems: list[FieldViolation] = []
        if bool(s.cron) == bool(s.interval_seconds):
            problems.append(FieldViolation(f"{prefix}cron", "set either cron or interval_seconds"))
        if s.cron:
            try:
                Cron.parse(s.cron)
            except CronError as exc:
                problems.append(FieldViolation(f"{prefix}cron", str(exc)))
        if s.interval_seconds and not 1 <= s.interval_seconds <= MAX_INTERVAL:
            problems.append(
                FieldViolation(f"{prefix}interval_seconds", f"must be 1 to {MAX_INTERVAL}")
            )
        if s.time_zone and not s.cron:
            problems.append(FieldViolation(f"{prefix}time_zone", "only with cron"))
        try:
            zone_of(s.time_zone)
        except CronError as exc:
            problems.append(FieldViolation(f"{prefix}time_zone", str(exc)))
        problems += check_json_size(s.body, f"{prefix}body", self._limits)
        problems += check_json_size(s.options.override, f"{prefix}options.override", self._limits)
        if s.options.no_wait:
            problems.append(FieldViolation(f"{prefix}options.no_wait", "not for schedules"))
        if problems:
            raise InvalidArgument(problems)
        if s.options.session_id:
            require_id(f"{prefix}options.session_id", s.options.session_id, "session")
        _, version = await self._runs.flow_and_version(
            s.organisation_id, s.flow_id, s.options.version, f"{prefix}flow_id",
            f"{prefix}options.version",
        )
        problems = check_inputs(s.body, version, f"{prefix}body") + check_overrides(
            s.options.override, version, f"{prefix}options.override"
        )
        if problems:
            raise InvalidArgument(problems)
        if s.options.webhook_url and self._runs.check_run_callback is not None:
            await self._runs.check_run_callback(
                s.organisation_id, s.options.webhook_url, f"{prefix}options.webhook_url"
            )

    def _with_times(self, s: Schedule) -> Schedule:
        s.next_run_times = s.upcoming()
        return s

    async def create(self, s: Schedule, request_id: str) -> Schedule:
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidArgument.one("request_id", f"at most {MAX_REQUEST_ID_CHARS} characters")
        require_id("schedule.flow_id", s.flow_id, "live flow")
        await self._check(s, "schedule.")
        now = self._clock()
        s = replace(s, id=new_id(), created_at=now, updated_at=now, paused=False)
        s.request_id = request_id
        s.request_digest = request_digest("CreateSchedule", s.flow_id, s.cron, s.time_zone,
                                          s.interval_seconds, s.body, s.options, s.overlap,
                                          s.catch_up)
        s.next_tick_at = s.next_after(now)
        created = await self._store.create_schedule(s)
        if created is None:  # the request_id was taken: the first request's schedule
            created = await self._store.schedule_by_request(s.organisation_id, request_id)
            if created is None or created.request_digest != s.request_digest:
                raise AlreadyExists(
                    f"request_id {request_id!r} was already used for a different request"
                )
        return self._with_times(created)

    async def get(self, org: str, schedule_id: str) -> Schedule:
        require_id("id", schedule_id, "schedule")
        found = await self._store.get_schedule(org, schedule_id)
        if found is None:
            raise NotFound("schedule", schedule_id)
        return self._with_times(found)

    async def list(
        self, org: str, flow_id: str, page_size: int, page_token: str
    ) -> Listed[Schedule]:
        keys = ("schedules", org, flow_id)
        page = parse_page(page_size, page_token, self._limits, *keys)
        found = await self._store.list_schedules(org, flow_id, page)
        return listed([self._with_times(s) for s in found], page, *keys)

    async def update(self, org: str, given: Schedule, mask: Sequence[str]) -> Schedule:
        if not mask:
            raise InvalidArgument.one("update_mask", "name the fields to change")
        unknown = [p for p in mask if p not in UPDATABLE]
        if unknown:
            raise InvalidArgument.one(
                "update_mask", f"cannot update {unknown[0][:64]!r}; one of {', '.join(UPDATABLE)}"
            )
        current = await self.get(org, given.id)
        changes: dict[str, Any] = {}
        for path in mask:
            name = "overlap" if path == "overlap_policy" else path
            changes[name] = getattr(given, name)
        if changes.get("cron"):
            changes.setdefault("interval_seconds", 0)
        if changes.get("interval_seconds"):
            changes.setdefault("cron", "")
            changes.setdefault("time_zone", "")
        updated = replace(current, **changes, updated_at=self._clock())
        await self._check(updated, "schedule.")
        if not updated.paused:
            updated.next_tick_at = updated.next_after(self._clock())
        if not await self._store.save_schedule(updated):
            raise NotFound("schedule", given.id)
        return self._with_times(updated)

    async def delete(self, org: str, schedule_id: str) -> None:
        require_id("id", schedule_id, "schedule")
        if not await self._store.delete_schedule(org, schedule_id):
            raise NotFound("schedule", schedule_id)

    async def set_paused(self, org: str, schedule_id: str, paused: bool) -> Schedule:
        s = await self.get(org, schedule_id)
        if s.paused == paused:
            return s
        s.paused = paused
        s.updated_at = self._clock()
        if not paused:  # ticks missed while paused are not run
            s.next_tick_at = s.next_after(s.updated_at)
        if not await self._store.save_schedule(s):
            raise NotFound("schedule", schedule_id)
        return self._with_times(s)

    async def trigger(self, org: str, schedule_id: str) -> FlowRun:
        s = await self.get(org, schedule_id)
        options = replace(s.options, schedule_id=s.id, scheduled_time=None)
        started = await self._runs.start(
            org, s.flow_id, dict(s.body), "", options, wait_for_commit=True
        )
        return started.run
