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
import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from flowsvc.domain.errors import FailedPrecondition, LeaseLost, NotFound
from flowsvc.domain.evals import wants_evaluation
from flowsvc.domain.hub import Hub
from flowsvc.domain.ids import new_id
from flowsvc.domain.model import FlowVersion, LlmConfig, Step, StepType
from flowsvc.domain.ports import FlowStore, Leases, RunStore
from flowsvc.domain.pricing import PriceTable
from flowsvc.domain.providers import (
    DEFAULT_MODEL,
    ChatTurn,
    ModelError,
    ModelRequest,
    Providers,
)
from flowsvc.domain.routing import GraphIndex, RoutingError
from flowsvc.domain.runs import (
    Cost,
    EventType,
    FlowRun,
    Journal,
    Message,
    RunEvent,
    RunStatus,
    Session,
    SessionStatus,
    SessionStep,
    StepStatus,
)
from flowsvc.domain.session_registry import HeldElsewhere, SessionRegistry, SessionState
from flowsvc.domain.templates import MissingValue, RenderContext, render
from flowsvc.domain.tools import HttpCall, HttpTool, NoHttp, ToolError

log = logging.getLogger("flowsvc.engine")

# Moves of instant steps are committed together; this bounds one journal.
MAX_BUFFERED_EVENTS = 64
TERMINAL_RUN = frozenset({RunStatus.COMPLETE, RunStatus.ERROR, RunStatus.CANCELLED})


class StepFailure(Exception):
    pass


@dataclass
class _RunContext:
    state: SessionState
    run: FlowRun
    version: FlowVersion
    graph: GraphIndex
    results: dict[str, str] = field(default_factory=dict)
    user_inputs: dict[str, str] = field(default_factory=dict)
    pending: list[asyncio.Future[None]] = field(default_factory=list)
    current: SessionStep | None = None
    # Moves not yet handed to the store: they go as one journal at the next flush.
    new_session: bool = False
    new_run: bool = False
    buffered_new_steps: dict[str, SessionStep] = field(default_factory=dict)
    buffered_steps: dict[str, SessionStep] = field(default_factory=dict)
    buffered_events: list[RunEvent] = field(default_factory=list)
    dirty: bool = False
    # The model each LLM step used, until its usage is added to the session's costs.
    models: dict[str, str] = field(default_factory=dict)
    # Set by a flush: the run lets other tasks in before its next step.
    yield_due: bool = False
    # Resolves once the run's first state (and a new session) is committed.
    first_commit: asyncio.Future[None] | None = None


def body_text(body: dict[str, Any]) -> str:
    """The user's message as text: a single value as it is, anything else as JSON."""
    if len(body) == 1:
        (value,) = body.values()
        if isinstance(value, str):
            return value
    return json.dumps(body, ensure_ascii=False, sort_keys=True)


def effective_llm(step: Step, override: dict[str, Any]) -> LlmConfig:
    config = step.llm or LlmConfig()
    changes = {
        key.split(".", 1)[1]: value
        for key, value in override.items()
        if key.split(".", 1)[0] == step.name
    }
    if "max_tokens" in changes:
        changes["max_tokens"] = int(changes["max_tokens"])
    return replace(config, **changes) if changes else config


class Engine:
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
        self._leases = leases
        self.sessions = SessionRegistry(leases, self._record, lease_seconds=lease_seconds)
        self.sessions.on_lost = self._abandon
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._task_runs: dict[str, FlowRun] = {}
        self._cancel_requested: set[str] = set()
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
            step=None if step is None else step.snapshot(),
            run=run.snapshot() if with_run else None,
            session_step_id="" if step is None else step.id,
        )

    def _record(self, journal: Journal) -> asyncio.Future[None]:
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
            elif isinstance(failure, LeaseLost) and session is not None and not journal.release:
                state = self.sessions.states.get(session.id)
                if state is not None and state.epoch == journal.epoch:
                    self.sessions.forget(state)
                    self._abandon(state)

        future.add_done_callback(committed)
        return future

    def _move(
        self,
        ctx: _RunContext,
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

    def _flush(self, ctx: _RunContext) -> None:
        if not ctx.dirty:
            return
        journal = Journal(
            session=ctx.state.session,
            epoch=ctx.state.epoch,
            session_is_new=ctx.new_session,
            new_runs=[ctx.run] if ctx.new_run else [],
            runs=[] if ctx.new_run else [ctx.run],
            new_steps=list(ctx.buffered_new_steps.values()),
            steps=list(ctx.buffered_steps.values()),
            events=ctx.buffered_events,
        )
        ctx.new_session = ctx.new_run = False
        ctx.buffered_new_steps, ctx.buffered_steps, ctx.buffered_events = {}, {}, []
        ctx.dirty = False
        ctx.yield_due = True
        future = self._record(journal)
        ctx.pending.append(future)
        first = ctx.first_commit
        if first is not None and not first.done():
            future.add_done_callback(lambda f: _chain(f, first))

    async def _settle(self, ctx: _RunContext) -> None:
        self._flush(ctx)
        pending, ctx.pending = ctx.pending, []
        if pending:
            await asyncio.gather(*pending)

    # -- starting runs -----------------------------------------------------------------

    def start(
        self, state: SessionState, run: FlowRun, version: FlowVersion, *, new_session: bool
    ) -> asyncio.Future[None]:
        """Launch a queued run (on a new session or an existing one). Its rows are written
        with its first moves; the returned future resolves once they are committed."""
        state.session.updated_at = self._clock()
        ctx = self._context(state, run, version)
        ctx.new_session = new_session
        ctx.new_run = True
        ctx.dirty = True
        first = ctx.first_commit = asyncio.get_running_loop().create_future()

        def stored(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is None:
                state.stored = True  # its row exists: the lease renewal may extend it now

        first.add_done_callback(stored)
        self._launch(ctx)
        return first

    def _context(self, state: SessionState, run: FlowRun, version: FlowVersion) -> _RunContext:
        return _RunContext(state, run, version, self._graph(version))

    def _launch(self, ctx: _RunContext) -> None:
        state, run = ctx.state, ctx.run
        state.users += 1
        task = asyncio.create_task(self._drive(ctx), name=f"run-{run.id}")
        self._tasks[run.id] = task
        self._task_runs[run.id] = run

        def done(t: asyncio.Task[None]) -> None:
            if self._tasks.get(run.id) is t:
                del self._tasks[run.id]
                self._task_runs.pop(run.id, None)
            self._cancel_requested.discard(run.id)
            self._release(state)
            first = ctx.first_commit
            if first is not None and not first.done():
                first.set_exception(RuntimeError("the run stopped before its first commit"))
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
        await asyncio.wait([task])
        if run_id in self._abandoned:
            self._abandoned.discard(run_id)
            return None
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
        if task.cancelled() and self._stopping:
            return None
        return run.snapshot()

    def has_task(self, run_id: str) -> bool:
        return run_id in self._tasks

    def active_run_ids(self, session_id: str) -> list[str]:
        return [rid for rid, run in self._task_runs.items() if run.session_id == session_id]

    async def schedule(self, org: str, session_id: str) -> bool:
        """Run what is queued (or was left running) on the session here, if this replica can
        hold it; False when another live replica holds it (it runs them when its turn ends).
        """
        try:
            async with self.session_state(org, session_id) as state:
                for run in await self._leases.active_runs(session_id):
                    if run.id in self._tasks:
                        continue
                    try:
                        version = await self._version_of(run)
                    except NotFound:
                        continue  # its flow is being deleted
                    self._launch(self._context(state, run, version))
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
        return claimed

    async def cancel_requested(self) -> None:
        """Cancel the local runs another replica asked to cancel."""
        for run_id in await self._leases.cancel_requests():
            task = self._tasks.get(run_id)
            if task is not None and run_id not in self._cancel_requested:
                self._cancel_requested.add(run_id)
                task.cancel()

    async def stop(self) -> None:
        """Shutdown: cut run tasks without journaling; they resume on the next start."""
        self._stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- driving a run -----------------------------------------------------------------

    async def _drive(self, ctx: _RunContext) -> None:
        state, run = ctx.state, ctx.run
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
            if not ctx.new_run and not await self._still_due(run):
                return  # run (or cancelled) meanwhile: a second launch of it changes nothing
            if run.cancel_requested:  # asked elsewhere before it got its turn here
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

    async def _load_progress(self, ctx: _RunContext) -> None:
        """A run that went on before (resumed, or answered) picks up its committed steps."""
        run = ctx.run
        if run.status is RunStatus.QUEUED or ctx.new_run:
            return
        run.steps = await self._runs.run_steps(run.id)
        for s in run.steps:
            if s.status is StepStatus.COMPLETED:
                ctx.results[s.step.name] = s.result
                if s.step.step_type is StepType.INPUT:
                    ctx.user_inputs[s.step.name] = s.user_input

    def _next(self, ctx: _RunContext) -> tuple[Step | None, SessionStep | None]:
        """Where the run goes on: a step to begin, or a started step to redo."""
        if not ctx.run.steps:
            return ctx.graph.start, None
        last = ctx.run.steps[-1]
        if last.status is StepStatus.RUNNING:
            return None, last
        return ctx.graph.next_step(last.step, last.result), None

    async def _walk(self, ctx: _RunContext) -> None:
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
                self._fail_run(ctx, current, str(exc))
                return
            self._complete_step(ctx, current, result)
            step_def, current = next_def, None

    def _render_context(self, ctx: _RunContext) -> RenderContext:
        session = ctx.state.session
        return RenderContext(
            inputs=ctx.run.body,
            variables=session.variables,
            results=ctx.results,
            user_inputs=ctx.user_inputs,
        )

    def _render(self, ctx: _RunContext, step: Step) -> str:
        prompt = step.prompt_template
        if prompt is None and step.http is None:
            return ""
        rc = self._render_context(ctx)
        if step.http is not None:
            call = self._http_call(step, rc)
            return f"{call.method} {call.url}" + (f"\n\n{call.body}" if call.body else "")
        assert prompt is not None
        if prompt.type == "chat":
            return "\n".join(f"{m.role}: {render(m.content, rc)}" for m in prompt.messages)
        return render(prompt.text, rc)

    @staticmethod
    def _http_call(step: Step, rc: RenderContext) -> HttpCall:
        config = step.http
        assert config is not None
        return HttpCall(
            method=config.method or "POST",
            url=render(config.url, rc),
            headers=tuple((k, render(v, rc)) for k, v in config.headers),
            body=render(config.body, rc),
            timeout_ms=config.timeout_ms,
        )

    async def _call_http(self, ctx: _RunContext, current: SessionStep) -> str:
        try:
            call = self._http_call(current.step, self._render_context(ctx))
        except MissingValue as exc:
            raise StepFailure(f"step {current.step.name!r}: {exc}") from exc
        self._flush(ctx)  # the call leaves the process: its start is committed first
        try:
            async with asyncio.timeout(self._step_timeout):
                return await self._http.call(call)
        except ToolError as exc:
            raise StepFailure(f"step {current.step.name!r}: {exc}") from exc
        except TimeoutError:
            raise StepFailure(
                f"step {current.step.name!r}: no answer within {self._step_timeout:g}s"
            ) from None

    def _begin_step(self, ctx: _RunContext, step: Step) -> SessionStep:
        session, now = ctx.state.session, self._clock()
        current = SessionStep(
            id=new_id(),
            session_id=session.id,
            run_id=ctx.run.id,
            organisation_id=session.organisation_id,
            position=session.steps_count + 1,
            flow_version_id=ctx.version.id,
            step=step,
            status=StepStatus.RUNNING,
            created_at=now,
            updated_at=now,
        )
        session.steps_count += 1
        session.current_step_id = current.id
        session.updated_at = now
        ctx.run.steps.append(current)
        try:
            current.prompt = self._render(ctx, step)
        except MissingValue as exc:
            current.error = f"step {step.name!r}: {exc}"
        self._move(
            ctx,
            [self._event(ctx.state, ctx.run, EventType.STEP_STARTED, step=current)],
            new_steps=(current,),
        )
        return current

    async def _perform(self, ctx: _RunContext, current: SessionStep) -> str | None:
        """The step's result, or None when it waits for a person."""
        kind = current.step.step_type
        if kind is StepType.INPUT:
            return None
        if kind is StepType.LLM:
            return await self._call_model(ctx, current)
        if kind is StepType.HTTP:
            return await self._call_http(ctx, current)
        # START has no prompt; CONDITION and END are their rendered prompt.
        return current.prompt

    async def _call_model(self, ctx: _RunContext, current: SessionStep) -> str:
        config = effective_llm(current.step, ctx.run.override)
        try:
            provider, model = self._providers.resolve(config.model)
        except ModelError as exc:
            raise StepFailure(f"step {current.step.name!r}: {exc}") from exc
        rc = self._render_context(ctx)
        turns: list[ChatTurn] = []
        try:
            if config.system_prompt:
                turns.append(ChatTurn("system", render(config.system_prompt, rc)))
            if config.include_history:
                turns.extend(ChatTurn(m.role, m.content) for m in ctx.state.session.messages)
            prompt = current.step.prompt_template
            if prompt is not None and prompt.type == "chat":
                turns.extend(ChatTurn(m.role, render(m.content, rc)) for m in prompt.messages)
            else:
                turns.append(ChatTurn("user", current.prompt))
        except MissingValue as exc:
            raise StepFailure(f"step {current.step.name!r}: {exc}") from exc
        request = ModelRequest(
            model=model,
            messages=tuple(turns),
            prompt=current.prompt,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
        )
        if not provider.instant:
            self._flush(ctx)  # STEP_STARTED is committed and visible while the model works
        parts: list[str] = []
        try:
            async with asyncio.timeout(self._step_timeout):
                async for chunk in provider.stream(request):
                    if chunk.text:
                        parts.append(chunk.text)
                        if self._hub.subscriber_count(current.session_id):
                            self._publish_delta(ctx, current, chunk.text)
                    if chunk.input_tokens is not None:
                        current.input_tokens = chunk.input_tokens
                    if chunk.output_tokens is not None:
                        current.output_tokens = chunk.output_tokens
        except ModelError as exc:
            raise StepFailure(f"step {current.step.name!r}: {exc}") from exc
        except TimeoutError:
            raise StepFailure(
                f"step {current.step.name!r}: the model did not finish within "
                f"{self._step_timeout:g}s"
            ) from None
        model_name = config.model or DEFAULT_MODEL
        current.cost = self._prices.cost(model_name, current.input_tokens, current.output_tokens)
        ctx.models[current.id] = model_name
        return "".join(parts)

    def _publish_delta(self, ctx: _RunContext, current: SessionStep, text: str) -> None:
        delta = RunEvent(
            seq=0,
            session_id=current.session_id,
            run_id=ctx.run.id,
            organisation_id=ctx.run.organisation_id,
            type=EventType.STEP_DELTA,
            time=self._clock(),
            delta=text,
            session_step_id=current.id,
        )
        self._flush(ctx)
        if not ctx.pending:
            self._hub.publish([delta])
            return
        # After the step's STEP_STARTED: done-callbacks run in the order they were added.
        hub = self._hub

        def publish(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is None:
                hub.publish([delta])

        ctx.pending[-1].add_done_callback(publish)

    def _complete_step(self, ctx: _RunContext, current: SessionStep, result: str) -> None:
        current.status = StepStatus.COMPLETED
        current.result = result
        current.updated_at = self._clock()
        ctx.results[current.step.name] = result
        self._add_usage(ctx, current)
        self._move(
            ctx,
            [self._event(ctx.state, ctx.run, EventType.STEP_COMPLETED, step=current)],
            steps=(current,),
        )

    def _add_usage(self, ctx: _RunContext, current: SessionStep) -> None:
        run, session = ctx.run, ctx.state.session
        run.input_tokens += current.input_tokens
        run.output_tokens += current.output_tokens
        run.cost += current.cost
        session.cost += current.cost
        model = ctx.models.pop(current.id, None)
        if model is None:
            return
        entry = next((c for c in session.costs if c.type == "model" and c.name == model), None)
        if entry is None:
            entry = Cost(type="model", name=model)
            session.costs.append(entry)
        entry.input_tokens += current.input_tokens
        entry.output_tokens += current.output_tokens
        entry.cost += current.cost

    def _finish(self, state: SessionState, run: FlowRun, status: RunStatus) -> datetime:
        now = self._clock()
        run.status = status
        run.end_time = now
        run.updated_at = now
        start = run.start_time or run.created_at
        run.duration_ms = int((now - start) / timedelta(milliseconds=1))
        if run.user_message is None:
            run.user_message = Message(new_id(), run.created_at, "user", body_text(run.body))
        if run.ai_message is None:
            run.ai_message = Message(new_id(), now, "assistant", "")
        state.session.updated_at = now
        return now

    def _complete_run(self, ctx: _RunContext, current: SessionStep, response: str) -> None:
        run, session = ctx.run, ctx.state.session
        current.status = StepStatus.COMPLETED
        current.result = response
        current.updated_at = self._clock()
        ctx.results[current.step.name] = response
        self._add_usage(ctx, current)
        self._finish(ctx.state, ctx.run, RunStatus.COMPLETE)
        run.response = response
        if wants_evaluation(run) and not run.eval_job_id:
            run.eval_job_id = new_id()  # the job is created with this id once this commits
        assert run.user_message is not None and run.ai_message is not None
        run.ai_message.content = response
        session.messages.extend([run.user_message, run.ai_message])
        session.status = SessionStatus.COMPLETED
        session.artifact = {"response": response, "steps": dict(ctx.results)}
        self._move(
            ctx,
            [
                self._event(ctx.state, run, EventType.STEP_COMPLETED, step=current),
                self._event(ctx.state, run, EventType.RUN_COMPLETED, with_run=True),
            ],
            steps=(current,),
        )

    def _fail_run(self, ctx: _RunContext, current: SessionStep | None, error: str) -> None:
        run, session = ctx.run, ctx.state.session
        events = []
        touched: tuple[SessionStep, ...] = ()
        if current is not None:
            current.status = StepStatus.FAILED
            current.error = error
            current.updated_at = self._clock()
            touched = (current,)
            events.append(self._event(ctx.state, run, EventType.STEP_FAILED, step=current))
        self._finish(ctx.state, ctx.run, RunStatus.ERROR)
        run.error = error
        session.status = SessionStatus.FAILED
        session.error = error
        events.append(self._event(ctx.state, run, EventType.RUN_FAILED, with_run=True))
        self._move(ctx, events, steps=touched)

    def _pause_for_input(self, ctx: _RunContext, current: SessionStep) -> None:
        run, session, now = ctx.run, ctx.state.session, self._clock()
        current.status = StepStatus.WAITING_FOR_INPUT
        current.updated_at = now
        run.status = RunStatus.WAITING_FOR_INPUT
        run.updated_at = now
        session.status = SessionStatus.WAITING_FOR_INPUT
        session.updated_at = now
        self._move(
            ctx,
            [self._event(ctx.state, run, EventType.INPUT_REQUIRED, step=current)],
            steps=(current,),
        )

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
        self._launch(self._context(state, run, version))
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
        steps = await self._runs.session_steps(session.id)
        for s in reversed(steps):
            if s.status is StepStatus.WAITING_FOR_INPUT:
                return s
        raise FailedPrecondition("session has no step waiting for input", kind="SESSION_STATE")

    async def cancel_run(self, state: SessionState, run_id: str) -> None:
        """Stop the run; returns once RUN_CANCELLED is committed."""
        task = self._tasks.get(run_id)
        if task is not None:
            self._cancel_requested.add(run_id)
            task.cancel()
            await asyncio.wait([task])
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

    async def _record_cancel(self, ctx: _RunContext, *, touch_session: bool = True) -> None:
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
            eval_job=job,
        )
        try:
            await self._record(Journal(events=[event]))
        except LeaseLost:
            return  # the session was deleted meanwhile

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


def _chain(source: asyncio.Future[None], target: asyncio.Future[None]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())  # type: ignore[arg-type]
    else:
        target.set_result(None)
