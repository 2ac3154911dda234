"""What callers do to a held session besides running it: answer its input step, cancel a
run, expire it, record an evaluation's outcome, delete it."""

from __future__ import annotations

import copy

from flowsvc.domain.engine.journal import TERMINAL_RUN, EngineCore, RunContext
from flowsvc.domain.engine.session_registry import SessionState
from flowsvc.domain.engine.steps import effective_llm
from flowsvc.domain.engine.waiting import until_done
from flowsvc.domain.errors import FailedPrecondition, LeaseLost, NotFound
from flowsvc.domain.model import FlowVersion, StepType
from flowsvc.domain.providers import DEFAULT_MODEL
from flowsvc.domain.runs import (
    EventType,
    FlowRun,
    Journal,
    RunEvent,
    RunStatus,
    Session,
    SessionStatus,
    SessionStep,
    StepStatus,
)


class SessionOperations(EngineCore):
    # -- input, cancel, expiry -----------------------------------------------------------

    async def submit_input(
        self, state: SessionState, answer: str, step_id: str, request_id: str
    ) -> str:
        """Answer the waiting INPUT step and let its run go on. Returns the run's id."""
        async with state.lock:
            session = state.session
            if request_id:
                answered = await self._runs.step_by_input_request(session.id, request_id)
                if answered is not None:
                    return answered.run_id
            await self._expire_if_due(state)
            if session.status is not SessionStatus.WAITING_FOR_INPUT:
                raise FailedPrecondition(
                    f"session is {session.status.value}, not waiting for input",
                    kind="SESSION_STATE",
                    subject=f"sessions/{session.id}",
                )
            waiting = await self._waiting_step(session)
            if step_id and step_id != waiting.id:
                raise FailedPrecondition(
                    f"step {step_id!r} is not the step waiting for input ({waiting.id})",
                    kind="STEP_STATE",
                    subject=f"sessions/{session.id}/steps/{step_id}",
                )
            run = await self._runs.get_run(session.organisation_id, waiting.run_id)
            if run is None:
                raise NotFound("run", waiting.run_id)
            version = await self._version_of(run)
            now = self._clock()
            waiting.status = StepStatus.COMPLETED
            waiting.result = answer
            waiting.user_input = answer
            waiting.input_request_id = request_id
            waiting.updated_at = now
            run.status = RunStatus.RUNNING
            run.updated_at = now
            run.steps = [waiting if s.id == waiting.id else s for s in run.steps]
            session.status = SessionStatus.RUNNING
            session.updated_at = now
            await self._record(
                Journal(
                    session=session,
                    epoch=state.epoch,
                    runs=[run],
                    steps=[waiting],
                    events=[self._event(state, run, EventType.STEP_COMPLETED, step=waiting)],
                )
            )
        # Read and answered under the session's lock, committed: the run is due and its steps
        # are these (its task need not read them again). No other launch can overtake it: a
        # second answer finds the session running, a schedule skips a run with a task here.
        ctx = self._context(state, run, version)
        ctx.due = ctx.steps_known = True
        self._launch(ctx)
        return run.id

    async def _still_due(self, run: FlowRun) -> bool:
        """Read under the session's lock: is the run still to be executed? A run queued in
        the database may have been launched twice (two schedules racing); its first task ran
        it to the end before the second got the lock."""
        fresh = await self._runs.get_run(run.organisation_id, run.id)
        if fresh is None or not fresh.status.active:
            return False
        run.cancel_requested = fresh.cancel_requested
        return True

    async def _version_of(self, run: FlowRun) -> FlowVersion:
        """The version a run is pinned to; gone only with its flow, and the run with it."""
        version = (await self._flows.load_versions({run.flow_version_id})).get(run.flow_version_id)
        if version is None:
            raise NotFound("run", run.id)
        return version

    async def _waiting_step(self, session: Session) -> SessionStep:
        waiting = await self._runs.last_step(session.id, StepStatus.WAITING_FOR_INPUT.value)
        if waiting is None:
            raise FailedPrecondition(
                "session has no step waiting for input", kind="SESSION_STATE"
            )
        return waiting

    async def cancel_run(self, state: SessionState, run_id: str) -> None:
        """Stop the run; returns once RUN_CANCELLED is committed."""
        task = self._tasks.get(run_id)
        if task is not None:
            self._cancel_task(run_id, task)
            await until_done(task)
            return
        async with state.lock:
            run = await self._runs.get_run(state.session.organisation_id, run_id)
            if run is None:
                raise NotFound("run", run_id)
            if run.status in TERMINAL_RUN:
                return
            version = await self._version_of(run)
            ctx = self._context(state, run, version)
            ctx.current = run.steps[-1] if run.steps else None
            await self._record_cancel(ctx)

    async def _record_cancel(self, ctx: RunContext, *, touch_session: bool = True) -> None:
        run = ctx.run
        if run.status in TERMINAL_RUN:
            await self._settle(ctx)
            return
        touched: tuple[SessionStep, ...] = ()
        current = ctx.current
        if current is not None and current.status in (
            StepStatus.RUNNING,
            StepStatus.WAITING_FOR_INPUT,
            StepStatus.NEW,
        ):
            current.status = StepStatus.CANCELLED
            current.updated_at = self._clock()
            touched = (current,)
        self._finish(ctx.state, ctx.run, RunStatus.CANCELLED)
        run.error = "cancelled"
        if touch_session:
            ctx.state.session.status = SessionStatus.CANCELLED
        self._move(
            ctx,
            [self._event(ctx.state, run, EventType.RUN_CANCELLED, with_run=True)],
            steps=touched,
        )
        await self._settle(ctx)

    async def _expire_if_due(self, state: SessionState) -> None:
        """Mark the session EXPIRED once its time is up; a run waiting for input fails."""
        session = state.session
        if session.status is SessionStatus.EXPIRED or self._clock() < session.expires_at:
            return
        if self.active_run_ids(session.id):
            return  # a running run finishes first; the session expires when it stops
        journal = Journal(session=session, epoch=state.epoch)
        if session.status is SessionStatus.WAITING_FOR_INPUT:
            waiting = await self._waiting_step(session)
            run = await self._runs.get_run(session.organisation_id, waiting.run_id)
            if run is not None:
                waiting.status = StepStatus.CANCELLED
                waiting.updated_at = self._clock()
                self._finish(state, run, RunStatus.ERROR)
                run.error = "session expired while waiting for input"
                journal.runs.append(run)
                journal.steps.append(waiting)
                journal.events.append(self._event(state, run, EventType.RUN_FAILED, with_run=True))
        session.status = SessionStatus.EXPIRED
        session.updated_at = self._clock()
        await self._record(journal)
        self._hub.close_session(session.id, "session expired")

    async def record_eval_completed(self, run: FlowRun, job: object) -> None:
        """EVAL_COMPLETED in the evaluated run's session, after its RUN_COMPLETED. It changes
        no session field, so it needs no lease: the database gives it the next seq."""
        event = RunEvent(
            seq=0,
            session_id=run.session_id,
            run_id=run.id,
            organisation_id=run.organisation_id,
            type=EventType.EVAL_COMPLETED,
            time=self._clock(),
            # As it is now: the event's row is encoded later, on the writer's thread.
            eval_job=copy.deepcopy(job),
        )
        try:
            await self._record(Journal(events=[event]))
        except LeaseLost:
            return  # the session was deleted meanwhile

    async def rollback_run(self, state: SessionState, run_id: str) -> None:
        """Remove a cancelled run's steps and costs from the session, as if it never ran
        (a cancelled run added no messages); RUN_ROLLED_BACK follows its events."""
        async with state.lock:
            session = state.session
            run = await self._runs.get_run(session.organisation_id, run_id)
            if run is None or run.status is not RunStatus.CANCELLED:
                return  # it finished before it could be cancelled: it stays
            for step in run.steps:
                session.cost -= step.cost
                if step.step.step_type is not StepType.LLM:
                    continue
                model = effective_llm(step.step, run.override).model or DEFAULT_MODEL
                for entry in session.costs:
                    if entry.type == "model" and entry.name == model:
                        entry.input_tokens -= step.input_tokens
                        entry.output_tokens -= step.output_tokens
                        entry.cost -= step.cost
            session.costs = [c for c in session.costs if c.input_tokens or c.output_tokens]
            removed = {s.id for s in run.steps}
            session.steps_count -= len(removed)
            if session.current_step_id in removed:
                kept = await self._runs.last_step(session.id, excluding=removed)
                session.current_step_id = "" if kept is None else kept.id
            session.updated_at = self._clock()
            rolled_back = run.snapshot()
            rolled_back.steps = []
            await self._record(
                Journal(
                    session=session,
                    epoch=state.epoch,
                    deleted_steps=sorted(removed),
                    events=[
                        self._event(state, rolled_back, EventType.RUN_ROLLED_BACK, with_run=True)
                    ],
                )
            )

    async def mark_cancelled(self, state: SessionState) -> None:
        """CancelSession with no run to stop still leaves the session CANCELLED."""
        async with state.lock:
            if state.session.status is SessionStatus.CANCELLED:
                return
            state.session.status = SessionStatus.CANCELLED
            state.session.updated_at = self._clock()
            await self._record(Journal(session=state.session, epoch=state.epoch))

    async def waiting_step(self, session: Session) -> SessionStep:
        return await self._waiting_step(session)

    async def expire_if_due(self, state: SessionState) -> None:
        async with state.lock:
            await self._expire_if_due(state)

    async def delete_session(self, state: SessionState) -> None:
        for run_id in self.active_run_ids(state.session.id):
            await self.cancel_run(state, run_id)
        async with state.lock:
            state.deleted = True
            await self._runs.delete_session(state.session.organisation_id, state.session.id)
        self._hub.close_session(state.session.id, "session deleted")


