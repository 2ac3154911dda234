"""Each replica's tick loop: claim due schedules (leased in the database, SKIP LOCKED across
replicas), start each one's run for its tick, then move the schedule on.

Exactly once per tick: the run's request_id is derived from the schedule and the tick, and
RunFlow's request_id is unique per organisation in the database. A replica killed after the
run committed but before the schedule moved on leaves the tick due; whoever claims it next
(the restarted server, another replica once the lease expires) asks for the same request_id
and gets the run that exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Protocol

from flowsvc.domain.errors import (
    AlreadyExists,
    DomainError,
    ResourceExhausted,
    Unavailable,
)
from flowsvc.domain.flow_runs import FlowRuns
from flowsvc.domain.schedules import CatchUp, Overlap, Schedule, tick_request_id

log = logging.getLogger("flowsvc.schedules")

# A tick more than this late (no server ran, the database was away) is "missed": with
# CATCH_UP_NONE it is skipped.
MISFIRE_SECONDS = 60.0
MAX_CATCH_UP_STEPS = 100_000
CLAIM_BATCH = 50


class TickStore(Protocol):
    async def claim_due(
        self, now: datetime, limit: int, lease_seconds: float
    ) -> list[Schedule]: ...
    async def finish_tick(self, s: Schedule, next_tick_at: datetime | None) -> None: ...
    async def release(self, s: Schedule) -> None: ...
    async def has_active_run(self, schedule_id: str) -> bool: ...
    async def run_exists(self, org: str, request_id: str) -> bool: ...


def latest_due(s: Schedule, now: datetime) -> datetime:
    """The latest tick at or before `now`, from the schedule's next tick (which is due)."""
    assert s.next_tick_at is not None
    tick = s.next_tick_at
    for _ in range(MAX_CATCH_UP_STEPS):
        following = s.next_after(tick)
        if following is None or following > now:
            return tick
        tick = following
    return tick


class Ticker:
    def __init__(
        self,
        store: TickStore,
        runs: FlowRuns,
        clock: Callable[[], datetime],
        *,
        poll_seconds: float,
        lease_seconds: float = 30.0,
    ) -> None:
        self._store = store
        self._runs = runs
        self._clock = clock
        self._poll = poll_seconds
        self._lease = lease_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="flowsvc-schedules")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.warning("schedule beat failed", exc_info=True)
            await asyncio.sleep(self._poll)

    async def tick(self) -> int:
        """One beat: every due schedule this replica could claim; returns runs started."""
        started = 0
        due = await self._store.claim_due(self._clock(), CLAIM_BATCH, self._lease)
        for s in due:
            try:
                started += await self._fire(s)
            except Exception:
                log.warning("schedule tick failed", extra={"schedule": s.id}, exc_info=True)
                with contextlib.suppress(Exception):
                    await self._store.release(s)
        return started

    async def _fire(self, s: Schedule) -> int:
        now = self._clock()
        tick = latest_due(s, now)
        following = s.next_after(tick)
        late = (now - tick).total_seconds()
        if s.catch_up is CatchUp.NONE and late > MISFIRE_SECONDS:
            log.info("schedule tick missed; skipped", extra={"schedule": s.id, "tick": str(tick)})
            await self._store.finish_tick(s, following)
            return 0
        if await self._store.has_active_run(s.id):
            if s.overlap is Overlap.ENQUEUE:
                await self._store.release(s)  # stays due: runs once the last run stops
                return 0
            log.info("schedule tick skipped: last run going", extra={"schedule": s.id})
            await self._store.finish_tick(s, following)
            return 0
        request_id = tick_request_id(s.id, tick)
        if await self._store.run_exists(s.organisation_id, request_id):
            await self._store.finish_tick(s, following)  # started before a crash: once
            return 0
        options = replace(s.options, schedule_id=s.id, scheduled_time=tick)
        try:
            await self._runs.start(s.organisation_id, s.flow_id, dict(s.body), request_id, options)
        except (ResourceExhausted, Unavailable):
            await self._store.release(s)  # try again on a later beat
            return 0
        except AlreadyExists:
            pass  # the tick ran before the schedule was changed: it ran, once
        except DomainError as exc:
            # The flow went away or no longer takes this body: the tick is skipped.
            log.warning(
                "schedule tick could not start a run",
                extra={"schedule": s.id, "error": exc.message},
            )
            await self._store.finish_tick(s, following)
            return 0
        await self._store.finish_tick(s, following)
        return 1

