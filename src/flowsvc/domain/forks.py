"""Forking a session at one of its completed steps (ForkSession).

The new session starts with the source's history before that step (copied with new ids),
then runs the forked run again from that step: a run whose completed prefix is written with
it, so the engine goes on after that prefix as it resumes any run from its committed steps.
The source session is only read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flowsvc.domain.engine import Engine, effective_llm
from flowsvc.domain.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from flowsvc.domain.flow_runs import FlowRuns
from flowsvc.domain.flows import MAX_REQUEST_ID_CHARS
from flowsvc.domain.idempotency import request_digest
from flowsvc.domain.ids import new_id, require_id
from flowsvc.domain.limits import Limits
from flowsvc.domain.model import FlowVersion, StepType
from flowsvc.domain.ports import RunStore
from flowsvc.domain.providers import DEFAULT_MODEL
from flowsvc.domain.routing import GraphIndex, RoutingError
from flowsvc.domain.run_requests import (
    NewSession,
    RunOptions,
    check_inputs,
    check_json_size,
    check_overrides,
)
from flowsvc.domain.runs import (
    Cost,
    FlowRun,
    Message,
    RunStatus,
    SessionStep,
    StepStatus,
)
from flowsvc.domain.sessions import Sessions, SessionView


@dataclass
class ForkRequest:
    session_id: str
    step_id: str
    inputs: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    override: dict[str, Any] = field(default_factory=dict)
    wait: bool = False
    request_id: str = ""


@dataclass
class History:
    """What a fork starts with: copies of the steps before the forked one (renumbered from 1),
    of the earlier runs that made them, and the messages and costs as they were then."""

    steps: list[SessionStep]
    runs: list[FlowRun]
    messages: list[Message]
    costs: list[Cost]

    @property
    def cost(self) -> float:
        return sum(s.cost for s in self.steps if s.status is StepStatus.COMPLETED)


_UNFINISHED_STEP = frozenset({StepStatus.NEW, StepStatus.RUNNING, StepStatus.WAITING_FOR_INPUT})


def messages_at(messages: list[Message], later_runs: Iterable[FlowRun]) -> list[Message]:
    """The session's messages as they were when a step began. A run appends its user and
    assistant message when it completes, and runs on a session take turns, so these are the
    messages without those of the runs that went on at or after that step (the step's own run
    among them); messages given at creation stay."""
    later = {
        m.id for run in later_runs for m in (run.user_message, run.ai_message) if m is not None
    }
    return [m for m in messages if m.id not in later]


def step_costs(steps: Iterable[SessionStep], runs: dict[str, FlowRun]) -> list[Cost]:
    """The session's model costs made by these steps, as the engine adds them up: one entry
    per model, from each completed LLM step (its model as its run's override made it)."""
    costs: dict[str, Cost] = {}
    for s in steps:
        if s.status is not StepStatus.COMPLETED or s.step.step_type is not StepType.LLM:
            continue
        run = runs.get(s.run_id)
        model = effective_llm(s.step, run.override if run else {}).model or DEFAULT_MODEL
        entry = costs.setdefault(model, Cost(type="model", name=model))
        entry.input_tokens += s.input_tokens
        entry.output_tokens += s.output_tokens
        entry.cost += s.cost
    return list(costs.values())


def copy_history(
    steps: list[SessionStep],
    forked: SessionStep,
    runs: dict[str, FlowRun],
    messages: list[Message],
    session_id: str,
    fork_run_id: str,
) -> History:
    """The new session's history: every step before `forked` (all runs), with new ids; the
    steps of forked's own run belong to the new run (`fork_run_id`), the others to copies of
    the runs that made them."""
    before = [s for s in steps if s.position < forked.position]
    later_ids = {s.run_id for s in steps if s.position >= forked.position}
    kept = messages_at(messages, (runs[r] for r in later_ids if r in runs))
    message_ids = {m.id: new_id() for m in kept}
    run_ids = {forked.run_id: fork_run_id}
    copied_runs = []
    for s in before:
        if s.run_id in run_ids:
            continue
        run_ids[s.run_id] = new_id()
        if s.run_id in runs:
            copy = _copy_run(runs[s.run_id], run_ids[s.run_id], session_id, message_ids)
            if s.run_id in later_ids:
                copy.status = RunStatus.CANCELLED  # it went on after the step: not here
            copied_runs.append(copy)
    copied = []
    for position, s in enumerate(before, start=1):
        step = s.snapshot()
        step.id = new_id()
        step.session_id = session_id
        step.run_id = run_ids[s.run_id]
        step.position = position
        step.input_request_id = ""
        if step.status in _UNFINISHED_STEP:
            step.status = StepStatus.CANCELLED
        copied.append(step)
    # Each copied message belongs to its run's copy ("" stays: given at creation).
    new_messages = [
        Message(message_ids[m.id], m.date, m.role, m.content, run_ids.get(m.run_id, ""), n)
        for n, m in enumerate(kept, start=1)
    ]
    return History(copied, copied_runs, new_messages, step_costs(before, runs))


def _copy_run(run: FlowRun, run_id: str, session_id: str, message_ids: dict[str, str]) -> FlowRun:
    """A run of the source session as it is, in the new session: its identity, request and
    callbacks stay with the original; a run that had not stopped is CANCELLED here."""
    copy = run.snapshot()
    copy.id = run_id
    copy.session_id = session_id
    copy.steps = []
    copy.request_id = copy.request_digest = copy.trace_context = ""
    copy.eval_job_id = copy.webhook_url = copy.schedule_id = ""
    copy.scheduled_time = None
    copy.cancel_requested = False
    copy.eval_job = None
    if not copy.status.stopped or copy.status is RunStatus.WAITING_FOR_INPUT:
        copy.status = RunStatus.CANCELLED
    for name in ("user_message", "ai_message"):
        m: Message | None = getattr(copy, name)
        if m is not None:
            new = Message(message_ids.get(m.id) or new_id(), m.date, m.role, m.content)
            setattr(copy, name, new)
    return copy


def route_problems(
    steps: list[SessionStep], forked: SessionStep, version: FlowVersion
) -> list[FieldViolation]:
    """The version must lead to the forked step from where its run was before it: the new
    run goes on after that prefix by the version's own transitions."""
    graph = GraphIndex.of(version.graph)
    prefix = [s for s in steps if s.run_id == forked.run_id and s.position < forked.position]
    try:
        if not prefix:
            reached = graph.start.name
        else:
            last = prefix[-1]
            step = graph.by_name.get(last.step.name, last.step)
            reached = graph.next_step(step, last.result).name
    except RoutingError as exc:
        reached = f"nowhere ({exc})"
    if reached == forked.step.name:
        return []
    return [
        FieldViolation(
            "version",
            f"version {version.version} goes on to {reached!r} where the forked run went on to "
            f"{forked.step.name!r}",
        )
    ]


class SessionForks:
    def __init__(
        self,
        sessions: Sessions,
        runs: FlowRuns,
        store: RunStore,
        engine: Engine,
        limits: Limits,
    ) -> None:
        self._sessions = sessions
        self._flow_runs = runs
        self._store = store
        self._engine = engine
        self._limits = limits

    async def fork(self, org: str, request: ForkRequest) -> SessionView:
        problems = [
            FieldViolation(name, "required")
            for name, value in (("session_id", request.session_id), ("step_id", request.step_id))
            if not value
        ]  # every missing id named at once
        problems += (
            check_json_size(request.inputs, "inputs", self._limits)
            + check_json_size(request.variables, "variables", self._limits)
            + check_json_size(request.override, "override", self._limits)
        )
        if request.version < 0:
            problems.append(FieldViolation("version", "must not be negative"))
        if len(request.request_id) > MAX_REQUEST_ID_CHARS:
            problems.append(
                FieldViolation("request_id", f"at most {MAX_REQUEST_ID_CHARS} characters")
            )
        if problems:
            raise InvalidArgument(problems)
        require_id("session_id", request.session_id, "session")
        require_id("step_id", request.step_id, "session step")
        digest = request_digest(
            "ForkSession",
            request.session_id,
            request.step_id,
            request.inputs,
            request.variables,
            request.version,
            request.override,
        )
        return await self._sessions.once(
            org, request.request_id, digest, lambda d: self._fork(org, request, d), request.wait
        )

    async def _fork(
        self, org: str, request: ForkRequest, digest: str
    ) -> tuple[str, str, asyncio.Future[None]]:
        found = await self._store.session_with_steps(org, request.session_id)
        if found is None:
            raise NotFound("session", request.session_id)
        source, steps = found
        forked = next((s for s in steps if s.id == request.step_id), None)
        if forked is None:
            raise NotFound("session step", request.step_id)
        if forked.status is not StepStatus.COMPLETED:
            raise FailedPrecondition(
                f"step {forked.step.name!r} is {forked.status.value}: a session forks from a "
                "completed step only",
                kind="STEP_STATE",
                subject=f"sessions/{source.id}/steps/{forked.id}",
            )
        runs = {r.id: r for r in await self._store.session_runs(org, source.id)}
        run = runs.get(forked.run_id)
        if run is None:
            raise NotFound("run", forked.run_id)
        flow, version = await self._flow_runs.flow_and_version(
            org, source.live_flow_id, request.version or run.version, "session_id", "version"
        )
        body = {**run.body, **request.inputs}
        override = {**run.override, **request.override}
        problems = (
            check_json_size(body, "inputs", self._limits)
            + check_inputs(body, version, "inputs")
            + check_overrides(override, version, "override")
            + route_problems(steps, forked, version)
        )
        if problems:
            raise InvalidArgument(problems)
        await self._flow_runs.check_capacity(org)
        spec = NewSession(
            name=source.name,
            expiration_seconds=source.expiration_seconds,
            variables={**source.variables, **request.variables},
            customer=source.customer,
            request_id=request.request_id,
        )
        inputs = {**source.inputs, **request.inputs}
        session = self._flow_runs.new_session(org, flow, version, inputs, spec)
        fork_run = self._flow_runs.new_run(
            org, flow.id, session.id, version, body, RunOptions(override=override), ""
        )
        history = copy_history(steps, forked, runs, source.messages or [], session.id, fork_run.id)
        self._flow_runs.check_message_room(source.id, len(history.messages), fork=True)
        session.messages = history.messages
        session.message_count = len(history.messages)
        session.cost, session.costs = history.cost, history.costs
        session.steps_count = len(history.steps)
        session.current_step_id = history.steps[-1].id if history.steps else ""
        session.parent_session_id, session.forked_from_step_id = source.id, forked.id
        session.request_digest = digest
        for s in history.steps:
            if s.run_id == fork_run.id and s.status is StepStatus.COMPLETED:
                fork_run.input_tokens += s.input_tokens
                fork_run.output_tokens += s.output_tokens
                fork_run.cost += s.cost
        state = self._engine.adopt_session(session)
        committed = self._engine.start(
            state,
            fork_run,
            version,
            new_session=True,
            copied_steps=history.steps,
            copied_runs=history.runs,
        )
        return session.id, fork_run.id, committed
