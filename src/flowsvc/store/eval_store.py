"""Evaluation jobs in SQL (off the hot path: plain transactions)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import literal_column, select, text, update

from flowsvc.domain.evals import EvalJob, EvalJobStatus
from flowsvc.domain.paging import Page
from flowsvc.domain.runs import FlowRun, RunStatus
from flowsvc.store.database import Database
from flowsvc.store.dialects import now_ms_sql
from flowsvc.store.run_codec import eval_job_from, eval_job_row, run_from
from flowsvc.store.sql_store import newest_first
from flowsvc.store.tables import RUN_WITH_EVAL_JOB, EvalJobRow, FlowRunRow

jobs = EvalJobRow.__table__  # type: ignore[attr-defined]
runs = FlowRunRow.__table__  # type: ignore[attr-defined]


class SqlEvalStore:
    def __init__(self, db: Database, owner_id: str, lease_seconds: float) -> None:
        self.db = db
        self._owner = owner_id
        now = now_ms_sql(db.dialect_name)
        self._expires: Any = literal_column(f"{now} + {int(lease_seconds * 1000)}")
        skip_locked = "" if db.is_sqlite else " FOR UPDATE SKIP LOCKED"
        self._claim = text(
            f"UPDATE eval_jobs SET owner_id = :me, lease_expires_ms = {now} + "
            f"{int(lease_seconds * 1000)} WHERE id IN (SELECT id FROM eval_jobs "
            f"WHERE status IN ('QUEUED', 'RUNNING') "
            f"AND (owner_id IS NULL OR lease_expires_ms < {now}) "
            f"ORDER BY created_at LIMIT :limit{skip_locked}) RETURNING *"
        ).columns(*jobs.c)

    async def save_job(self, job: EvalJob, *, new: bool) -> bool:
        """Insert (leased to this replica) or update; an insert of a job that exists already
        (another replica wrote it first) changes nothing and answers False."""
        values = eval_job_row(job)
        async with self.db.write() as conn:
            if new:
                exists = (
                    await conn.execute(select(jobs.c.id).where(jobs.c.id == job.id))
                ).first()
                if exists is not None:
                    return False
                await conn.execute(
                    jobs.insert().values(
                        **values, owner_id=self._owner, lease_expires_ms=self._expires
                    )
                )
            else:
                await conn.execute(update(jobs).where(jobs.c.id == job.id).values(**values))
        return True

    async def claim_jobs(self, limit: int) -> list[EvalJob]:
        """Unfinished jobs nobody live is running, now this replica's (SKIP LOCKED: replicas
        claiming together take disjoint jobs)."""
        async with self.db.write() as conn:
            rows = (await conn.execute(self._claim, {"me": self._owner, "limit": limit})).all()
        return [eval_job_from(r) for r in rows]

    async def get_job(self, org: str, job_id: str) -> EvalJob | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(jobs).where(jobs.c.id == job_id, jobs.c.organisation_id == org)
                )
            ).first()
        return None if row is None else eval_job_from(row)

    async def list_jobs(self, org: str, run_id: str, flow_id: str, page: Page) -> list[EvalJob]:
        query = select(jobs).where(jobs.c.organisation_id == org)
        if run_id:
            query = query.where(jobs.c.run_id == run_id)
        if flow_id:
            query = query.where(jobs.c.flow_id == flow_id)
        async with self.db.read() as conn:
            rows = (await conn.execute(newest_first(query, jobs, page))).all()
        return [eval_job_from(r) for r in rows]

    async def unfinished_jobs(self) -> list[EvalJob]:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(jobs)
                    .where(
                        jobs.c.status.in_([EvalJobStatus.QUEUED.value, EvalJobStatus.RUNNING.value])
                    )
                    .order_by(jobs.c.created_at)
                )
            ).all()
        return [eval_job_from(r) for r in rows]

    async def runs_missing_jobs(self) -> list[FlowRun]:
        """Completed runs that named an evaluation job a crash kept from being written."""
        query = (
            select(runs)
            .outerjoin(jobs, jobs.c.id == runs.c.eval_job_id)
            .where(
                runs.c.status == RunStatus.COMPLETE.value,
                text(f"flow_runs.{RUN_WITH_EVAL_JOB}"),
                jobs.c.id.is_(None),
            )
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [run_from(r) for r in rows]
