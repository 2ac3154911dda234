"""Schedules in SQL; due ones are leased to one replica at a time (SKIP LOCKED)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, select, text, update
from sqlalchemy.exc import IntegrityError

from flowsvc.domain.paging import Page
from flowsvc.domain.run_requests import RunOptions
from flowsvc.domain.schedules import CatchUp, Overlap, Schedule
from flowsvc.store.column_types import UTCDateTime
from flowsvc.store.database import Database
from flowsvc.store.dialects import now_ms_sql
from flowsvc.store.run_store import RUN_ID_BY_REQUEST
from flowsvc.store.sql_store import newest_first
from flowsvc.store.tables import ACTIVE_RUN, FlowRunRow, ScheduleRow

schedules = ScheduleRow.__table__  # type: ignore[attr-defined]
runs = FlowRunRow.__table__  # type: ignore[attr-defined]
_OPTION_FIELDS = ("session_id", "version", "override", "eval_options", "no_wait", "webhook_url")


def _row(s: Schedule) -> dict[str, Any]:
    options = asdict(s.options)
    return {
        "id": s.id,
        "organisation_id": s.organisation_id,
        "flow_id": s.flow_id,
        "cron": s.cron,
        "time_zone": s.time_zone,
        "interval_seconds": s.interval_seconds,
        "body": s.body,
        "options": {k: options[k] for k in _OPTION_FIELDS},
        "overlap_policy": s.overlap.value,
        "catch_up": s.catch_up.value,
        "paused": s.paused,
        "next_tick_at": s.next_tick_at,
        "request_id": s.request_id or None,
        "request_digest": s.request_digest,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    }


def _schedule(r: Any) -> Schedule:
    return Schedule(
        id=r.id,
        organisation_id=r.organisation_id,
        flow_id=r.flow_id,
        cron=r.cron,
        time_zone=r.time_zone,
        interval_seconds=r.interval_seconds,
        body=r.body,
        options=RunOptions(**{k: v for k, v in r.options.items() if k in _OPTION_FIELDS}),
        overlap=Overlap(r.overlap_policy),
        catch_up=CatchUp(r.catch_up),
        paused=bool(r.paused),
        next_tick_at=r.next_tick_at,
        created_at=r.created_at,
        updated_at=r.updated_at,
        request_id=r.request_id or "",
        request_digest=r.request_digest,
    )


class SqlScheduleStore:
    def __init__(self, db: Database, owner_id: str) -> None:
        self.db = db
        self._owner = owner_id
        now = now_ms_sql(db.dialect_name)
        skip_locked = "" if db.is_sqlite else " FOR UPDATE SKIP LOCKED"
        self._claim = (
            text(
                f"UPDATE schedules SET owner_id = :me, lease_expires_ms = {now} + :lease "
                f"WHERE id IN (SELECT id FROM schedules WHERE paused = :no "
                f"AND next_tick_at <= :now AND (owner_id IS NULL OR lease_expires_ms < {now}) "
                f"ORDER BY next_tick_at LIMIT :limit{skip_locked}) RETURNING *"
            )
            .bindparams(bindparam("now", type_=UTCDateTime()))
            .columns(*schedules.c)
        )

    async def create_schedule(self, s: Schedule) -> Schedule | None:
        try:
            async with self.db.write() as conn:
                await conn.execute(schedules.insert().values(**_row(s), lease_expires_ms=0))
        except IntegrityError:
            return None
        return s

    async def schedule_by_request(self, org: str, request_id: str) -> Schedule | None:
        return await self._one(
            (schedules.c.organisation_id == org) & (schedules.c.request_id == request_id)
        )

    async def get_schedule(self, org: str, schedule_id: str) -> Schedule | None:
        return await self._one(
            (schedules.c.organisation_id == org) & (schedules.c.id == schedule_id)
        )

    async def _one(self, condition: Any) -> Schedule | None:
        async with self.db.read() as conn:
            row = (await conn.execute(select(schedules).where(condition))).first()
        return None if row is None else _schedule(row)

    async def list_schedules(self, org: str, flow_id: str, page: Page) -> list[Schedule]:
        query = select(schedules).where(schedules.c.organisation_id == org)
        if flow_id:
            query = query.where(schedules.c.flow_id == flow_id)
        async with self.db.read() as conn:
            rows = (await conn.execute(newest_first(query, schedules, page))).all()
        return [_schedule(r) for r in rows]

    async def save_schedule(self, s: Schedule) -> bool:
        values = _row(s)
        for key in ("id", "organisation_id", "request_id", "request_digest", "created_at"):
            del values[key]
        async with self.db.write() as conn:
            done = await conn.execute(
                update(schedules)
                .where(schedules.c.id == s.id, schedules.c.organisation_id == s.organisation_id)
                .values(values)
            )
        return bool(done.rowcount)

    async def delete_schedule(self, org: str, schedule_id: str) -> bool:
        async with self.db.write() as conn:
            done = await conn.execute(
                delete(schedules).where(
                    schedules.c.id == schedule_id, schedules.c.organisation_id == org
                )
            )
        return bool(done.rowcount)

    # -- ticks -----------------------------------------------------------------------------

    async def claim_due(self, now: datetime, limit: int, lease_seconds: float) -> list[Schedule]:
        params = {
            "me": self._owner,
            "lease": int(lease_seconds * 1000),
            "no": False,
            "now": now,
            "limit": limit,
        }
        async with self.db.write() as conn:
            rows = (await conn.execute(self._claim, params)).all()
        return [_schedule(r) for r in rows]

    async def finish_tick(self, s: Schedule, next_tick_at: datetime | None) -> None:
        """Moves the schedule on past the tick it claimed (unless it was changed meanwhile:
        an update or resume set its own next tick)."""
        async with self.db.write() as conn:
            await conn.execute(
                update(schedules)
                .where(
                    schedules.c.id == s.id,
                    schedules.c.owner_id == self._owner,
                    schedules.c.next_tick_at == s.next_tick_at,
                )
                .values(next_tick_at=next_tick_at)
            )
            await self._release(conn, s)

    async def forget_owners(self) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(schedules)
                .where(schedules.c.owner_id.is_not(None))
                .values(owner_id=None, lease_expires_ms=0)
            )

    async def release(self, s: Schedule) -> None:
        async with self.db.write() as conn:
            await self._release(conn, s)

    async def _release(self, conn: Any, s: Schedule) -> None:
        await conn.execute(
            update(schedules)
            .where(schedules.c.id == s.id, schedules.c.owner_id == self._owner)
            .values(owner_id=None, lease_expires_ms=0)
        )

    async def has_active_run(self, schedule_id: str) -> bool:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(runs.c.id)
                    .where(runs.c.schedule_id == schedule_id, text(ACTIVE_RUN))
                    .limit(1)
                )
            ).first()
        return row is not None

    async def run_exists(self, org: str, request_id: str) -> bool:
        async with self.db.read() as conn:
            params = {"org": org, "request_id": request_id}
            row = (await conn.execute(RUN_ID_BY_REQUEST, params)).first()
        return row is not None
