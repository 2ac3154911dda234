"""The engine's base: its dependencies, the sessions it holds, and journaling.

Every change goes to the store as one Journal per move, in order; events reach subscribers
only from the journal's commit callback, so nothing is streamed uncommitted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime

from flowsvc.domain.engine.session_registry import SessionRegistry, SessionState
from flowsvc.domain.errors import LeaseLost
from flowsvc.domain.hub import Hub
from flowsvc.domain.model import FlowVersion
from flowsvc.domain.ports import FlowStore, Leases, RunStore
from flowsvc.domain.pricing import PriceTable
from flowsvc.domain.providers import (
    Providers,
)
from flowsvc.domain.routing import GraphIndex
from flowsvc.domain.run_counts import ActiveRunCounts
from flowsvc.domain.runs import (
    EventType,
    FlowRun,
    Journal,
    Message,
    RunEvent,
    RunStatus,
    Session,
    SessionStep,
    run_values,
    step_values,
)
from flowsvc.domain.telemetry import NoTelemetry, Telemetry
from flowsvc.domain.tools import HttpTool, NoHttp

log = logging.getLogger("flowsvc.engine")

# Moves of instant steps are committed together; this bounds one journal.
MAX_BUFFERED_EVENTS = 64
TERMINAL_RUN = frozenset({RunStatus.COMPLETE, RunStatus.ERROR, RunStatus.CANCELLED})


class StepFailure(Exception):
    pass


@dataclass
class RunContext:
    state: SessionState
    run: FlowRun
    version: FlowVersion
    graph: GraphIndex
    results: dict[str, str] = field(default_factory=dict)
    user_inputs: dict[str, str] = field(default_factory=dict)
    pending: list[asyncio.Future[None]] = field(default_factory=list)
    # The store's future of the last journal handed over: what follows its commit (a step's
    # deltas after its STEP_STARTED) is chained on it, behind the publishing of its events.
    last_commit: asyncio.Future[None] | None = None
    current: SessionStep | None = None
    # Moves not yet handed to the store: they go as one journal at the next flush.
    new_session: bool = False
    new_run: bool = False
    buffered_new_steps: dict[str, SessionStep] = field(default_factory=dict)
    buffered_steps: dict[str, SessionStep] = field(default_factory=dict)
    buffered_events: list[RunEvent] = field(default_factory=list)
    buffered_messages: list[Message] = field(default_factory=list)
    dirty: bool = False
    # The model each LLM step used, until its usage is added to the session's costs.
    models: dict[str, str] = field(default_factory=dict)
    # Set by a flush: the run lets other tasks in before its next step.
    yield_due: bool = False
    # Resolves once the run's first state (and a new session) is committed.
    first_commit: asyncio.Future[None] | None = None
    # A forked session's copied runs: inserted with the run's first commit.
    copied_runs: list[FlowRun] = field(default_factory=list)
    # Launched by the request that queued it, on a session idle here: it is due, no re-read.
    due: bool = False
    # The run's steps were read (and changed) under the session's lock by whoever launched it
    # (an answer to its INPUT step): current, no re-read.
    steps_known: bool = False


class EngineCore:
    def __init__(
        self,
        runs: RunStore,
        flows: FlowStore,
        hub: Hub,
        providers: Providers,
        leases: Leases,
        *,
        lease_seconds: float = 10.0,
        step_limit: int,
        clock: Callable[[], datetime],
        http: HttpTool | None = None,
        prices: PriceTable | None = None,
        step_timeout: float = 300.0,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._runs = runs
        self._flows = flows
        self._hub = hub
        self._providers = providers
        self._step_limit = step_limit
        self._clock = clock
        self._http: HttpTool = http or NoHttp()
        self._prices = prices or PriceTable()
        self._step_timeout = step_timeout
        self.telemetry: Telemetry = telemetry or NoTelemetry()
        self._leases = leases
        self.run_counts = ActiveRunCounts(leases)
        self.sessions = SessionRegistry(leases, self._record, lease_seconds=lease_seconds)
        self.sessions.on_lost = self._abandon
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._task_runs: dict[str, FlowRun] = {}
        self._cancel_requested: set[str] = set()
        # Run tasks that have begun: a task cancelled before its first step would never run
        # a line (nothing recorded), so such a task is only flagged (_cancel_task).
        self._begun: set[str] = set()
        # Runs whose session another replica took over: they stop without writing more.
        self._abandoned: set[str] = set()
        self._graphs: dict[str, GraphIndex] = {}
        self._stopping = False
        # Called when a run that asked for evaluation completes, inside its turn on the
        # session: starts the evaluation job.
        self.on_complete: Callable[[FlowRun], Awaitable[None]] | None = None

    # -- session state ---------------------------------------------------------------

    def session_state(
        self, org: str, session_id: str, *, wait: float = 0.0
    ) -> AbstractAsyncContextManager[SessionState]:
        """The session, leased to this replica while in use (HeldElsewhere if another
        replica keeps it longer than `wait` seconds)."""
        return self.sessions.using(org, session_id, wait=wait)

    def adopt_session(self, session: Session) -> SessionState:
        return self.sessions.adopt(session)

    def _release(self, state: SessionState) -> None:
        self.sessions.release(state)

    def _cancel_task(self, run_id: str, task: asyncio.Task[None]) -> None:
        """Cancel a local run as CancelFlowRun does: it records RUN_CANCELLED, also when it
        had not begun (it then sees the request as its first act)."""
        self._cancel_requested.add(run_id)
        if run_id in self._begun:
            task.cancel()

    def _abandon(self, state: SessionState) -> None:
        """Another replica took the session over: its local runs stop, writing nothing."""
        for run_id, run in list(self._task_runs.items()):
            if run.session_id == state.session.id:
                self._abandoned.add(run_id)
                self._tasks[run_id].cancel()

    def _graph(self, version: FlowVersion) -> GraphIndex:
        graph = self._graphs.get(version.id)
        if graph is None:
            graph = self._graphs[version.id] = GraphIndex.of(version.graph)
        return graph

    # -- journaling --------------------------------------------------------------------

    def _event(
        self,
        state: SessionState,
        run: FlowRun,
        kind: EventType,
        *,
        step: SessionStep | None = None,
        with_run: bool = False,
    ) -> RunEvent:
        return RunEvent(
            seq=0,  # allocated by the database at commit
            session_id=run.session_id,
            run_id=run.id,
            organisation_id=run.organisation_id,
            type=kind,
            time=self._clock(),
            # Frozen values, not records: a record is made only if a subscriber reads it.
            step_values=None if step is None else step_values(step),
            run_values=run_values(run) if with_run else None,
            session_step_id="" if step is None else step.id,
        )

    def _record(self, journal: Journal) -> asyncio.Future[None]:
        """Hand the journal to the store. The answer is shielded: a caller that is cancelled
        while it waits cancels its wait, never the commit or what follows it (publishing)."""
        return asyncio.shield(self._commit(journal))

    def _commit(self, journal: Journal) -> asyncio.Future[None]:
        """The store's own future for the journal, with what follows its outcome attached."""
        future = self._runs.record(journal)
        events = journal.events
        hub = self._hub
        session = journal.session

        def committed(done: asyncio.Future[None]) -> None:
            if done.cancelled():
                return
            failure = done.exception()
            if failure is None:
                if events:
                    hub.publish(events)
            elif session is not None and journal.epoch and not journal.release:
                # Refused (another replica took the session) or lost (the database went away):
                # what this replica holds in memory may be ahead of what is committed, so it
                # lets the session go; its runs resume from committed state on the next claim.
                if isinstance(failure, LeaseLost):
                    self.telemetry.write_fenced()
                state = self.sessions.states.get(session.id)
                if state is not None and state.epoch == journal.epoch:
                    self.sessions.forget(state)
                    self._abandon(state)

        future.add_done_callback(committed)
        return future

    def _move(
        self,
        ctx: RunContext,
        events: list[RunEvent],
        *,
        new_steps: tuple[SessionStep, ...] = (),
        steps: tuple[SessionStep, ...] = (),
    ) -> None:
        """Buffer a move; records are encoded when the buffer is flushed, so a record changed
        by several moves in a row is written once, in its latest state."""
        for s in new_steps:
            ctx.buffered_new_steps[s.id] = s
        for s in steps:
            if s.id not in ctx.buffered_new_steps:
                ctx.buffered_steps[s.id] = s
        ctx.buffered_events.extend(events)
        ctx.dirty = True
        if len(ctx.buffered_events) >= MAX_BUFFERED_EVENTS:
            self._flush(ctx)  # a long run of instant steps still commits as it goes

    def _flush(self, ctx: RunContext) -> None:
        if not ctx.dirty:
            return
        journal = Journal(
            session=ctx.state.session,
            epoch=ctx.state.epoch,
            session_is_new=ctx.new_session,
            new_runs=[ctx.run, *ctx.copied_runs] if ctx.new_run else [],
            runs=[] if ctx.new_run else [ctx.run],
            new_steps=list(ctx.buffered_new_steps.values()),
            steps=list(ctx.buffered_steps.values()),
            events=ctx.buffered_events,
            new_messages=ctx.buffered_messages,
        )
        ctx.new_session = ctx.new_run = False
        ctx.copied_runs = []
        ctx.buffered_new_steps, ctx.buffered_steps, ctx.buffered_events = {}, {}, []
        ctx.buffered_messages = []
        ctx.dirty = False
        ctx.yield_due = True
        future = ctx.last_commit = self._commit(journal)
        ctx.pending.append(asyncio.shield(future))
        first = ctx.first_commit
        if first is not None and not first.done():
            # From the store's own future: its outcome, never a waiter's cancellation.
            future.add_done_callback(lambda f: _chain(f, first))

    async def _settle(self, ctx: RunContext) -> None:
        self._flush(ctx)
        pending, ctx.pending = ctx.pending, []
        if pending:
            await asyncio.gather(*pending)

    def _context(self, state: SessionState, run: FlowRun, version: FlowVersion) -> RunContext:
        return RunContext(state, run, version, self._graph(version))

    async def _conversation(self, state: SessionState) -> list[Message]:
        """The held session's messages: read once while it is held, appended to after."""
        session = state.session
        if session.messages is None:
            session.messages = await self._runs.session_messages(session.id)
        return session.messages

    def _append_messages(self, ctx: RunContext, added: list[Message]) -> None:
        """Messages join the conversation with the move that adds them; the journal carries
        only these, never the whole conversation."""
        session = ctx.state.session
        for m in added:
            session.message_count += 1
            m.position = session.message_count
            m.run_id = ctx.run.id
        if session.messages is not None:
            session.messages.extend(added)
        ctx.buffered_messages.extend(added)

    def active_count(self) -> int:
        """Runs executing on this replica."""
        return len(self._tasks)

    def has_task(self, run_id: str) -> bool:
        return run_id in self._tasks

    def active_run_ids(self, session_id: str) -> list[str]:
        """The session's runs with a task on this replica."""
        return [rid for rid, run in self._task_runs.items() if run.session_id == session_id]

    def local_runs(self, session_id: str = "", flow_id: str = "") -> list[FlowRun]:
        """Runs with a task on this replica, of a session or of a flow: a run launched on an
        idle session may not be committed yet, so the database does not know it."""
        return [
            run.snapshot()
            for run in self._task_runs.values()
            if (session_id and run.session_id == session_id) or (flow_id and run.flow_id == flow_id)
        ]

    def idle_here(self, state: SessionState) -> bool:
        """The held session has no run going or waiting for its turn on this replica."""
        return (
            state.releasing is None
            and not state.deleted
            and state.stored
            and not state.lock.locked()
            and not self.active_run_ids(state.session.id)
            and self.sessions.states.get(state.session.id) is state
        )

    def _launch(self, ctx: RunContext) -> None:
        raise NotImplementedError  # the run loop launches runs

    def _finish(self, state: SessionState, run: FlowRun, status: RunStatus) -> datetime:
        raise NotImplementedError


def _chain(source: asyncio.Future[None], target: asyncio.Future[None]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())  # type: ignore[arg-type]
    else:
        target.set_result(None)
