"""The durable engine: walks a pinned flow version step by step, journaling every move.

Rules it keeps:
- Every change goes to the store as one Journal per move, in order. Events reach
  subscribers only from the journal's commit callback: nothing is streamed uncommitted.
- A run awaits its outstanding journals before it reports that it stopped, so anything a
  caller is told is already committed.
- A session is changed only by the replica holding its lease (SessionRegistry); every
  journal names the lease's epoch, and a journal the database refuses (another replica took
  the session over) makes the engine abandon the session's runs without writing more.
- Runs on one session take turns (a per-session lock, FIFO); runs queued by other replicas
  wait in the database until the holder (or whoever claims the session next) runs them.
- Seqs are allocated by the database when a journal commits, never by memory.
- A run task cancelled by the server's shutdown leaves its committed state as it is and is
  resumed by the next claim (this replica's next start, or another replica); a run cancelled
  by a caller commits RUN_CANCELLED.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from flowsvc.domain.engine.journal import TERMINAL_RUN, RunContext, StepFailure
from flowsvc.domain.engine.session_ops import SessionOperations
from flowsvc.domain.engine.session_registry import HeldElsewhere, SessionState
from flowsvc.domain.engine.steps import StepExecution
from flowsvc.domain.engine.waiting import until_done
from flowsvc.domain.errors import LeaseLost, NotFound, Unavailable
from flowsvc.domain.model import FlowVersion, Step, StepType
from flowsvc.domain.routing import RoutingError
from flowsvc.domain.runs import (
    EventType,
    FlowRun,
    RunStatus,
    SessionStatus,
    SessionStep,
    StepStatus,
)

log = logging.getLogger("flowsvc.engine")


class Engine(SessionOperations, StepExecution):
    # -- starting runs -----------------------------------------------------------------

    def start(
        self,
        state: SessionState,
        run: FlowRun,
        version: FlowVersion,
        *,
        new_session: bool,
        copied_steps: Sequence[SessionStep] = (),
        copied_runs: Sequence[FlowRun] = (),
        stored: bool = False,
    ) -> asyncio.Future[None]:
        """Launch a queued run on a new session or on one idle here. Its rows are written with
        its first moves (`stored`: the run's QUEUED row is committed already); the returned
        future resolves once they are committed.

        A forked session's history (copied_steps, copied_runs) is written in that same first
        commit; the copied steps of `run` itself are its completed prefix: the run goes on
        after them, as a run resumed from its committed steps does."""
        state.session.updated_at = self._clock()
        ctx = self._context(state, run, version)
        ctx.new_session = new_session
        if new_session:
            ctx.buffered_messages = list(state.session.messages or [])  # given at creation
        ctx.new_run = not stored
        ctx.due = True
        ctx.dirty = True
        for s in copied_steps:
            ctx.buffered_new_steps[s.id] = s
        run.steps = [s for s in copied_steps if s.run_id == run.id]
        ctx.copied_runs = list(copied_runs)
        first = ctx.first_commit = asyncio.get_running_loop().create_future()

        def written(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is None:
                state.stored = True  # its row exists: the lease renewal may extend it now

        first.add_done_callback(written)
        self._launch(ctx)
        return first

    def _context(self, state: SessionState, run: FlowRun, version: FlowVersion) -> RunContext:
        return RunContext(state, run, version, self._graph(version))

    def _launch(self, ctx: RunContext) -> None:
        state, run = ctx.state, ctx.run
        state.users += 1
        self._abandoned.discard(run.id)  # launched anew (resumed here after a takeover)
        task = asyncio.create_task(self._drive(ctx), name=f"run-{run.id}")
        self._tasks[run.id] = task
        self._task_runs[run.id] = run
        self.run_counts.started(run.organisation_id)

        def done(t: asyncio.Task[None]) -> None:
            self.run_counts.stopped(run.organisation_id)
            if self._tasks.get(run.id) is t:
                del self._tasks[run.id]
                self._task_runs.pop(run.id, None)
            self._cancel_requested.discard(run.id)
            self._begun.discard(run.id)
            self._release(state)
            first = ctx.first_commit
            if first is not None and not first.done():
                first.set_exception(Unavailable("the run stopped before it was committed; retry"))
                first.exception()
            failure = None if t.cancelled() else t.exception()
            if isinstance(failure, LeaseLost) or run.id in self._abandoned:
                self._abandoned.add(run.id)
                log.warning("run abandoned: another replica took its session over",
                            extra={"run_id": run.id})
            elif failure is not None:
                log.error("run task failed", exc_info=failure, extra={"run_id": run.id})

        task.add_done_callback(done)

    async def wait(self, run_id: str) -> FlowRun | None:
        """Wait until the run stops (finished or waiting for input); None if no task of this
        replica ran it to that point (the store, or another replica, has the answer)."""
        task = self._tasks.get(run_id)
        if task is None:
            return None
        run = self._task_runs[run_id]
        await until_done(task)
        if run_id in self._abandoned:
            self._abandoned.discard(run_id)
            return None
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
        if task.cancelled() and self._stopping:
            return None
        return run.snapshot()

    async def schedule(self, org: str, session_id: str) -> bool:
        """Run what is queued (or was left running) on the session here, if this replica can
        hold it; False when another live replica holds it (it runs them when its turn ends).
        """
        try:
            async with self.session_state(org, session_id) as state:
                launched_all = True
                for run in await self._leases.active_runs(session_id):
                    if run.id in self._tasks:
                        continue
                    try:
                        version = await self._version_of(run)
                    except NotFound:
                        launched_all = False
                        continue  # its flow is being deleted
                    self._launch(self._context(state, run, version))
                state.runs_known = launched_all
        except HeldElsewhere:
            return False
        except NotFound:
            return False  # deleted meanwhile
        return True

    async def claim_orphans(self, limit: int = 100) -> int:
        """Claim sessions with runs to execute and no live owner (a dead replica's, this
        process's previous life's, or queued while a lease was going away) and run them."""
        claimed = 0
        for org, session_id in await self._leases.claimable(limit):
            if await self.schedule(org, session_id):
                claimed += 1
        self.telemetry.sessions_taken_over(claimed)
        return claimed

    async def cancel_requested(self) -> None:
        """Cancel the local runs another replica asked to cancel."""
        for run_id in await self._leases.cancel_requests():
            task = self._tasks.get(run_id)
            if task is not None and run_id not in self._cancel_requested:
                self._cancel_task(run_id, task)

    async def stop(self) -> None:
        """Shutdown: cut run tasks without journaling; they resume on the next start."""
        self._stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- driving a run -----------------------------------------------------------------

    async def _drive(self, ctx: RunContext) -> None:
        with self.telemetry.run_span(ctx.run):
            await self._drive_in_span(ctx)
        run = ctx.run
        if run.status in TERMINAL_RUN and run.end_time is not None:
            self.telemetry.run_finished(run, run.duration_ms / 1000)

    async def _drive_in_span(self, ctx: RunContext) -> None:
        state, run = ctx.state, ctx.run
        self._begun.add(run.id)
        if run.id in self._cancel_requested and run.status is RunStatus.QUEUED:
            # Cancelled before it began and never went: the session is not its to touch.
            await self._record_cancel(ctx, touch_session=False)
            return
        try:
            await state.lock.acquire()
        except asyncio.CancelledError:
            if self._stopping or run.id in self._abandoned or run.id not in self._cancel_requested:
                raise
            await self._record_cancel(ctx, touch_session=False)
            return
        try:
            if state.deleted:
                return
            if not ctx.due and not await self._still_due(run):
                return  # run (or cancelled) meanwhile: a second launch of it changes nothing
            if run.cancel_requested or run.id in self._cancel_requested:
                # Asked elsewhere before it got its turn here, or here before its task began
                # (a run that went on before: answered, resumed): its current step too.
                await self._load_progress(ctx)
                ctx.current = run.steps[-1] if run.steps else None
                await self._record_cancel(ctx)
                return
            await self._load_progress(ctx)
            await self._walk(ctx)
            await self._settle(ctx)
            if run.status is RunStatus.COMPLETE and run.eval_job_id and self.on_complete:
                await self.on_complete(run)
        except asyncio.CancelledError:
            if self._stopping or run.id in self._abandoned or run.id not in self._cancel_requested:
                raise
            await self._record_cancel(ctx)
        finally:
            state.lock.release()

    async def _load_progress(self, ctx: RunContext) -> None:
        """A run that went on before (resumed, or answered) picks up its committed steps."""
        run = ctx.run
        if run.status is not RunStatus.QUEUED and not ctx.new_run and not ctx.steps_known:
            run.steps = await self._runs.run_steps(run.id)
        # (A new run has no steps, unless a fork gave it its completed prefix.)
        for s in run.steps:
            if s.status is StepStatus.COMPLETED:
                ctx.results[s.step.name] = s.result
                if s.step.step_type is StepType.INPUT:
                    ctx.user_inputs[s.step.name] = s.user_input

    def _next(self, ctx: RunContext) -> tuple[Step | None, SessionStep | None]:
        """Where the run goes on: a step to begin, or a started step to redo."""
        if not ctx.run.steps:
            return ctx.graph.start, None
        last = ctx.run.steps[-1]
        if last.status is StepStatus.RUNNING:
            return None, last
        # By name: a forked run's prefix may come from another version of the flow.
        step = ctx.graph.by_name.get(last.step.name, last.step)
        return ctx.graph.next_step(step, last.result), None

    async def _walk(self, ctx: RunContext) -> None:
        run, session = ctx.run, ctx.state.session
        now = self._clock()
        if run.status is RunStatus.QUEUED:
            run.status = RunStatus.RUNNING
            run.start_time = now
            run.updated_at = now
            session.status = SessionStatus.RUNNING
            session.error = ""
            session.updated_at = now
            self._move(ctx, [self._event(ctx.state, run, EventType.RUN_STARTED, with_run=True)])
        try:
            step_def, current = self._next(ctx)
        except RoutingError as exc:
            self._fail_run(ctx, ctx.run.steps[-1], str(exc))
            return
        while True:
            if ctx.yield_due:
                ctx.yield_due = False
                await asyncio.sleep(0)  # instant steps never wait: share the loop fairly
            if current is None:
                assert step_def is not None
                if len(run.steps) >= self._step_limit:
                    self._fail_run(
                        ctx,
                        None,
                        f"run stopped after {self._step_limit} steps: the per-run step limit "
                        "(a loop that never reaches END?)",
                    )
                    return
                current = self._begin_step(ctx, step_def)
            ctx.current = current
            with self.telemetry.step_span(run, current) as span:
                try:
                    if current.error:
                        raise StepFailure(current.error)
                    result = await self._perform(ctx, current)
                    if result is None:
                        self._pause_for_input(ctx, current)
                        return
                    if current.step.step_type is StepType.END:
                        self._complete_run(ctx, current, result)
                        return
                    next_def = ctx.graph.next_step(current.step, result)
                except (StepFailure, RoutingError) as exc:
                    span.fail(str(exc))
                    self._fail_run(ctx, current, str(exc))
                    return
                self._complete_step(ctx, current, result)
            step_def, current = next_def, None

