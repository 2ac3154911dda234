"""Evaluations: a run's output judged by evaluation flows, as a persisted job."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from flowsvc.domain.errors import FieldViolation, InvalidArgument, NotFound
from flowsvc.domain.ids import new_id, require_id
from flowsvc.domain.limits import Limits
from flowsvc.domain.paging import Listed, Page, listed, parse_page
from flowsvc.domain.ports import FlowStore
from flowsvc.domain.runs import FlowRun, RunStatus
from flowsvc.domain.telemetry import NoTelemetry, Telemetry
from flowsvc.domain.verdicts import parse_verdict

if TYPE_CHECKING:
    from flowsvc.domain.flow_runs import FlowRuns

log = logging.getLogger("flowsvc.evals")

MODE_ASYNC, MODE_BLOCK, MODE_SKIP = (
    "EVAL_RUN_MODE_ASYNC",
    "EVAL_RUN_MODE_BLOCK",
    "EVAL_RUN_MODE_SKIP",
)


class EvalJobStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    ERROR = "ERROR"


@dataclass(slots=True)
class EvalResult:
    flow_eval_id: str
    external_input: Any = None
    eval_run_id: str = ""
    score: float = 0.0
    passed: bool = False
    output: str = ""
    error: str = ""
    done: bool = False


@dataclass(slots=True)
class EvalJob:
    id: str
    organisation_id: str
    run_id: str
    flow_id: str
    status: EvalJobStatus
    created_at: datetime
    results: list[EvalResult] = field(default_factory=list)
    finished_at: datetime | None = None


class EvalStore(Protocol):
    async def save_job(self, job: EvalJob, *, new: bool) -> bool:
        """False when a new job exists already (written first elsewhere)."""
        ...

    async def claim_jobs(self, limit: int) -> list[EvalJob]:
        """Unfinished jobs no live replica runs, now leased to this one."""
        ...

    async def get_job(self, org: str, job_id: str) -> EvalJob | None: ...

    async def list_jobs(self, org: str, run_id: str, flow_id: str, page: Page) -> list[EvalJob]: ...

    async def unfinished_jobs(self) -> list[EvalJob]: ...

    async def runs_missing_jobs(self) -> list[FlowRun]: ...


def run_mode(eval_options: dict[str, Any]) -> str:
    mode = eval_options.get("run_mode") or MODE_ASYNC
    return MODE_ASYNC if mode == "EVAL_RUN_MODE_UNSPECIFIED" else str(mode)


def wants_evaluation(run: FlowRun) -> bool:
    """A top-level run not in SKIP mode with evaluation flows (auto-run ones are filled into
    eval_options.runs when the run is created)."""
    return (
        not run.parent_run_id
        and run_mode(run.eval_options) != MODE_SKIP
        and bool(run.eval_options.get("runs"))
    )


class Evaluations:
    def __init__(
        self,
        flows: FlowStore,
        store: EvalStore,
        limits: Limits,
        clock: Callable[[], datetime],
        telemetry: Telemetry | None = None,
    ) -> None:
        self._telemetry: Telemetry = telemetry or NoTelemetry()
        self._flows = flows
        self._store = store
        self._limits = limits
        self._clock = clock
        self._runs: FlowRuns | None = None
        self._finished: dict[str, asyncio.Future[EvalJob]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_finished: Callable[[EvalJob], Any] | None = None

    def bind(self, runs: FlowRuns) -> None:
        self._runs = runs

    async def check(self, org: str, eval_options: dict[str, Any]) -> None:
        """Every named evaluation flow must be one of the organisation's: before anything runs."""
        problems: list[FieldViolation] = []
        for i, item in enumerate(eval_options.get("runs", [])):
            flow_id = str(item.get("flow_eval_id", ""))
            at = f"options.eval_options.runs[{i}].flow_eval_id"
            try:
                require_id(at, flow_id, "live flow")
                found = await self._flows.get_flow(org, flow_id)
            except NotFound:
                found = None
            except InvalidArgument as exc:
                problems.extend(exc.violations)
                continue
            if found is None:
                problems.append(
                    FieldViolation(at, f"no live flow {flow_id[:80]!r} to evaluate with")
                )
            elif found.current_version is None:
                problems.append(FieldViolation(at, "that evaluation flow has no version"))
        if problems:
            raise InvalidArgument(problems)

    async def start(self, run: FlowRun) -> EvalJob | None:
        """After a run completed: its evaluation job (persisted before this returns), or None."""
        if run.status is not RunStatus.COMPLETE or not wants_evaluation(run):
            return None
        wanted = [
            (str(item["flow_eval_id"]), item.get("flow_eval_external_input"))
            for item in run.eval_options.get("runs", [])
        ]
        job = EvalJob(
            id=run.eval_job_id or new_id(),
            organisation_id=run.organisation_id,
            run_id=run.id,
            flow_id=run.flow_id,
            status=EvalJobStatus.QUEUED,
            created_at=self._clock(),
            results=[EvalResult(flow_eval_id=f, external_input=x) for f, x in wanted],
        )
        if await self._store.save_job(job, new=True):
            self._launch(job, run)
        return job

    def _launch(self, job: EvalJob, run: FlowRun | None) -> None:
        done: asyncio.Future[EvalJob] = asyncio.get_running_loop().create_future()
        self._finished[job.id] = done
        task = asyncio.create_task(self._execute(job, run, done), name=f"eval-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def finished(self, job_id: str) -> EvalJob | None:
        done = self._finished.get(job_id)
        return None if done is None else await asyncio.shield(done)

    async def _execute(
        self, job: EvalJob, run: FlowRun | None, done: asyncio.Future[EvalJob]
    ) -> None:
        assert self._runs is not None
        try:
            if run is None:
                run = await self._runs.get_run(job.organisation_id, job.run_id)
            job.status = EvalJobStatus.RUNNING
            await self._store.save_job(job, new=False)
            await asyncio.gather(*(self._evaluate(job, run, r) for r in job.results))
            job.status = EvalJobStatus.COMPLETE
        except asyncio.CancelledError:
            raise  # shutdown: the job resumes on the next start
        except Exception:
            log.exception("evaluation job failed", extra={"job_id": job.id})
            job.status = EvalJobStatus.ERROR
        job.finished_at = self._clock()
        self._telemetry.eval_job_finished(job.status.value)
        # The run's EVAL_COMPLETED (carrying the finished job) is committed before the job is
        # saved as finished: whoever sees the job finished finds the event too, and a crash in
        # between leaves the job to resume (and announce itself again), never finished with
        # its event lost.
        if self.on_finished is not None:
            try:
                await self.on_finished(job)
            except Exception:  # saved finished anyway: a waiter must not hang on it
                log.exception("EVAL_COMPLETED not recorded", extra={"job_id": job.id})
        await self._store.save_job(job, new=False)
        self._finished.pop(job.id, None)
        done.set_result(job)

    async def _evaluate(self, job: EvalJob, run: FlowRun, result: EvalResult) -> None:
        assert self._runs is not None
        if result.done:
            return
        from flowsvc.domain.run_requests import RunOptions

        try:
            evaluated = None
            if result.eval_run_id:
                try:
                    evaluated = await self._runs.finished_by_id(
                        job.organisation_id, result.eval_run_id
                    )
                except NotFound:
                    evaluated = None  # never committed before a crash: run it again
            if evaluated is None:
                body = {
                    "input": run.body,
                    "output": run.response,
                    "external_input": result.external_input,
                }
                started = await self._runs.start(
                    job.organisation_id,
                    result.flow_eval_id,
                    body,
                    "",
                    RunOptions(eval_options={"run_mode": MODE_SKIP}),
                    parent_run_id=run.id,
                )
                if started.committed is not None:
                    await started.committed  # the job names only runs that exist
                result.eval_run_id = started.run.id
                await self._store.save_job(job, new=False)
                evaluated = await self._runs.finished(started)
            result.output = evaluated.response
            if evaluated.status is not RunStatus.COMPLETE:
                result.error = (
                    evaluated.error or f"the evaluation run ended {evaluated.status.value}"
                )
            else:
                verdict = parse_verdict(evaluated.response)
                result.score, result.passed = verdict.score, verdict.passed
        except (ValueError, InvalidArgument, NotFound) as exc:
            result.error = (
                str(exc) if not isinstance(exc, (InvalidArgument, NotFound)) else exc.message
            )
        except Exception:  # an evaluation never fails the job or the evaluated run
            log.exception("evaluation failed", extra={"job_id": job.id})
            result.error = "the evaluation could not run"
        result.done = True

    async def resume_unfinished(self) -> int:
        """On start: jobs nobody runs, and jobs a crash kept from being written."""
        resumed = await self.claim_orphans()
        missing = await self._store.runs_missing_jobs()
        for run in missing:
            await self.start(run)
        return resumed + len(missing)

    async def claim_orphans(self, limit: int = 50) -> int:
        """Jobs a dead replica (or this process's previous life) left unfinished."""
        jobs = await self._store.claim_jobs(limit)
        for job in jobs:
            if job.id not in self._finished:
                self._launch(job, None)
        return len(jobs)

    def running_count(self) -> int:
        return len(self._tasks)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def get(self, org: str, job_id: str) -> EvalJob:
        require_id("id", job_id, "eval job")
        job = await self._store.get_job(org, job_id)
        if job is None:
            raise NotFound("eval job", job_id)
        return job

    async def list(
        self, org: str, run_id: str, flow_id: str, page_size: int, page_token: str
    ) -> Listed[EvalJob]:
        page = parse_page(page_size, page_token, self._limits, "evals", org, run_id, flow_id)
        found = await self._store.list_jobs(org, run_id, flow_id, page)
        return listed(found, page, "evals", org, run_id, flow_id)
