"""A run on an existing session (RunFlow with options.session_id), part of FlowRuns.

A run on a session this replica holds (or can claim) with nothing going is launched at once,
as a run on a new session is: no QUEUED row first on SQLite, where this process is the only
one that could see it, and no re-reads of the session or the run under its lock. Otherwise
the run is made durable as QUEUED first and whoever holds the session runs it in its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flowsvc.domain.engine import Engine
from flowsvc.domain.engine.session_registry import HeldElsewhere, SessionState
from flowsvc.domain.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
)
from flowsvc.domain.ids import new_id
from flowsvc.domain.limits import Limits
from flowsvc.domain.model import FlowVersion, LiveFlow
from flowsvc.domain.ports import Leases, RunStore
from flowsvc.domain.run_requests import MultitaskStrategy, RunOptions, Started
from flowsvc.domain.run_stopping import RunStopping
from flowsvc.domain.runs import FlowRun, Journal, RunStatus, Session, SessionStatus


class SessionRuns(RunStopping):
    _engine: Engine
    _leases: Leases
    _runs: RunStore
    _limits: Limits
    _clock: Callable[[], datetime]

    async def flow_and_version(
        self, org: str, flow_id: str, number: int, flow_field: str, version_field: str
    ) -> tuple[LiveFlow, FlowVersion]:
        raise NotImplementedError

    def new_run(
        self,
        org: str,
        flow_id: str,
        session_id: str,
        version: FlowVersion,
        body: dict[str, Any],
        options: RunOptions,
        request_id: str,
        parent_run_id: str = "",
    ) -> FlowRun:
        """A QUEUED run (on a new session, or on this one)."""
        now = self._clock()
        return FlowRun(
            parent_run_id=parent_run_id,
            id=new_id(),
            organisation_id=org,
            flow_id=flow_id,
            session_id=session_id,
            flow_version_id=version.id,
            version=version.version,
            body=body,
            override=dict(options.override),
            status=RunStatus.QUEUED,
            created_at=now,
            updated_at=now,
            eval_options=dict(options.eval_options),
            request_id=request_id,
            trace_context=self._engine.telemetry.trace_context(),
            schedule_id=options.schedule_id,
            scheduled_time=options.scheduled_time,
            webhook_url=options.webhook_url,
        )

    async def _start_on_session(
        self,
        org: str,
        flow: LiveFlow,
        version: FlowVersion,
        body: dict[str, Any],
        request_id: str,
        options: RunOptions,
        parent_run_id: str,
        digest: str,
        wait_for_commit: bool,
    ) -> Started:
        async with contextlib.AsyncExitStack() as held:
            state: SessionState | None
            try:
                # A claim returns the session's row: no read of its own (and a session kept
                # here since its last run needs not even that).
                state = await held.enter_async_context(
                    self._engine.session_state(org, options.session_id)
                )
                session = state.session
            except HeldElsewhere as busy:
                state, session = None, busy.session
            session = await self._check_session(org, flow, session, state)
            if not options.version:
                _, version = await self.flow_and_version(
                    org, flow.id, session.version, "flow_id", "options.version"
                )
            run = self.new_run(
                org, flow.id, session.id, version, body, options, request_id, parent_run_id
            )
            run.request_digest = digest
            strategy = options.multitask
            if strategy in (MultitaskStrategy.INTERRUPT, MultitaskStrategy.ROLLBACK):
                await self._interrupt(
                    org, session.id, rollback=strategy is MultitaskStrategy.ROLLBACK
                )
            if state is not None and strategy is not MultitaskStrategy.REJECT:
                started = await self._launch_if_idle(state, run, version)
                if started is not None:
                    if wait_for_commit:
                        assert started.committed is not None
                        await started.committed  # a request_id taken meanwhile is told here
                    return started
            return await self._queue(org, session, run, strategy)
        raise AssertionError("unreachable")  # the exit stack does not swallow exceptions

    async def _check_session(
        self, org: str, flow: LiveFlow, session: Session, state: SessionState | None
    ) -> Session:
        if session.live_flow_id != flow.id:
            raise InvalidArgument.one(
                "options.session_id", "the session belongs to another live flow"
            )
        if session.status is not SessionStatus.EXPIRED and self._clock() >= session.expires_at:
            if state is not None:
                await self._engine.expire_if_due(state)
            else:
                with contextlib.suppress(HeldElsewhere):
                    async with self._engine.session_state(org, session.id) as expiring:
                        await self._engine.expire_if_due(expiring)
                        session = expiring.session
        if session.status is SessionStatus.EXPIRED:
            raise FailedPrecondition(
                "the session has expired", kind="SESSION_STATE", subject=f"sessions/{session.id}"
            )
        if session.status is SessionStatus.WAITING_FOR_INPUT:
            raise FailedPrecondition(
                "the session is waiting for input: answer it with SubmitUserInput or cancel it",
                kind="SESSION_STATE",
                subject=f"sessions/{session.id}",
            )
        self.check_message_room(session.id, session.message_count)
        return session

    def check_message_room(self, session_id: str, messages: int, *, fork: bool = False) -> None:
        """A session holding `messages` must have room for the 2 a run adds (a fork: the
        messages it would copy from `session_id`)."""
        if messages + 2 > self._limits.max_messages_per_session:
            holds = (
                f"a fork of the session would start with {messages} of its messages"
                if fork
                else f"the session holds {messages} messages"
            )
            raise ResourceExhausted(
                f"{holds}; a run adds 2 and the limit is "
                f"{self._limits.max_messages_per_session} (max_messages_per_session)",
                subject=f"sessions/{session_id}",
                limit="max_messages_per_session",
            )

    async def _launch_if_idle(
        self, state: SessionState, run: FlowRun, version: FlowVersion
    ) -> Started | None:
        """Launch the run now if nothing else is going on the session. Other replicas learn
        of a run only from the database: where there are any (PostgreSQL), the run is made
        durable as QUEUED first, as a queued run is, so that their REJECT and INTERRUPT see
        it; runs they queued meanwhile go first, in order (None: queue this one too)."""
        if not self._engine.idle_here(state):
            return None
        stored = self._leases.shared
        # Claimed without knowing its runs (not made or scheduled here): runs the database
        # holds for it (queued, or left running by a stopped process) go first, in order.
        if stored or not state.runs_known:
            if await self._leases.active_runs(state.session.id):
                return None
            if not stored:
                if not self._engine.idle_here(state):
                    return None
                state.runs_known = True
        if stored:
            await self._runs.record(Journal(new_runs=[run]))
            if not self._engine.idle_here(state):
                await self._engine.schedule(run.organisation_id, run.session_id)
                return self._started(state.session, run)
        committed = self._engine.start(state, run, version, new_session=False, stored=stored)
        return self._started(state.session, run, committed)

    async def _queue(
        self, org: str, session: Session, run: FlowRun, strategy: MultitaskStrategy
    ) -> Started:
        """The run is durable (QUEUED) before anything runs it; whichever replica holds the
        session runs it in its turn."""
        if strategy is not MultitaskStrategy.REJECT:
            # Group-committed with everything else being written: no transaction of its own.
            await self._runs.record(Journal(new_runs=[run]))
        elif self._engine.active_run_ids(session.id) or not await self._leases.insert_queued_run(
            run, only_if_idle=True
        ):
            # A run going here may not be committed yet: this replica's tasks count too.
            raise Aborted(
                "the session is running another run and multitask_strategy is REJECT "
                "(or no_wait is set)"
            )
        await self._engine.schedule(org, session.id)
        return self._started(session, run)

    @staticmethod
    def _started(
        session: Session, run: FlowRun, committed: asyncio.Future[None] | None = None
    ) -> Started:
        if committed is None:
            committed = asyncio.get_running_loop().create_future()
            committed.set_result(None)
        return Started(run, session, session.last_seq, committed=committed)
