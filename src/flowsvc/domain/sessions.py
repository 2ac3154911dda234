"""Sessions: the use cases behind SessionService."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flowsvc.domain.engine import Engine
from flowsvc.domain.engine.session_registry import HeldElsewhere, SessionState
from flowsvc.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    RequestIdTaken,
)
from flowsvc.domain.flow_runs import FlowRuns
from flowsvc.domain.flows import MAX_REQUEST_ID_CHARS
from flowsvc.domain.hub import Hub
from flowsvc.domain.idempotency import request_digest
from flowsvc.domain.ids import require_id
from flowsvc.domain.limits import Limits
from flowsvc.domain.model import FlowVersion
from flowsvc.domain.paging import Listed, listed, parse_page
from flowsvc.domain.ports import FlowStore, Leases, RunStore
from flowsvc.domain.run_requests import (
    MAX_EXPIRATION,
    MIN_EXPIRATION,
    NewSession,
    RunOptions,
    check_inputs,
    check_json_size,
)
from flowsvc.domain.runs import Session, SessionStatus, SessionStep
from flowsvc.domain.watch import EventBatch, follow_batches

MESSAGE_ROLES = frozenset({"user", "assistant", "system"})


@dataclass
class SessionView:
    """A session as GetSession shows it: with its steps and version."""

    session: Session
    steps: list[SessionStep]
    version: FlowVersion | None


class Sessions:
    def __init__(
        self,
        engine: Engine,
        runs: FlowRuns,
        flows: FlowStore,
        store: RunStore,
        hub: Hub,
        leases: Leases,
        limits: Limits,
        clock: Callable[[], datetime],
        *,
        hold_wait: float = 15.0,
    ) -> None:
        self._leases = leases
        self._hold_wait = hold_wait
        self._engine = engine
        self._flow_runs = runs
        self._flows = flows
        self._store = store
        self._hub = hub
        self._limits = limits
        self._clock = clock

    def _check_new(self, spec: NewSession) -> list[FieldViolation]:
        problems = []
        if len(spec.name) > self._limits.max_session_name_chars:
            problems.append(
                FieldViolation("name", f"at most {self._limits.max_session_name_chars} characters")
            )
        if spec.expiration_seconds is not None and not (
            MIN_EXPIRATION <= spec.expiration_seconds <= MAX_EXPIRATION
        ):
            problems.append(
                FieldViolation(
                    "expiration_seconds", f"must be between {MIN_EXPIRATION} and {MAX_EXPIRATION}"
                )
            )
        if len(spec.messages) > self._limits.max_messages_per_session:
            problems.append(
                FieldViolation(
                    "messages", f"at most {self._limits.max_messages_per_session} messages"
                )
            )
        problems += check_json_size(spec.variables, "variables", self._limits)
        for i, message in enumerate(spec.messages):
            if message.role not in MESSAGE_ROLES:
                problems.append(
                    FieldViolation(f"messages[{i}].role", "one of user, assistant, system")
                )
        if len(spec.request_id) > MAX_REQUEST_ID_CHARS:
            problems.append(
                FieldViolation("request_id", f"at most {MAX_REQUEST_ID_CHARS} characters")
            )
        return problems

    async def create(
        self,
        org: str,
        flow_id: str,
        inputs: dict[str, Any],
        version_number: int,
        spec: NewSession,
        wait: bool,
    ) -> SessionView:
        problems = self._check_new(spec)
        if problems:
            raise InvalidArgument(problems)
        digest = request_digest("CreateSession", flow_id, inputs, version_number, spec)
        return await self.once(
            org,
            spec.request_id,
            digest,
            lambda d: self._create(org, flow_id, inputs, version_number, spec, d),
            wait,
        )

    async def once(
        self,
        org: str,
        request_id: str,
        digest: str,
        make: Callable[[str], Awaitable[tuple[str, str, asyncio.Future[None]]]],
        wait: bool,
    ) -> SessionView:
        """Make a session (make(digest) -> session id, its run's id, its first commit) once
        per request_id: a retry answers with the session the first request made."""
        if not request_id:
            session_id, run_id, committed = await make("")
            return await self._answer(org, session_id, run_id, committed, wait)

        async def lookup() -> str | None:
            found = await self._store.session_by_request(org, request_id)
            return None if found is None else found.id

        while True:
            existing_id, claim = await self._flow_runs.claims.claim(
                ("session", org, request_id), lookup
            )
            if existing_id is not None:
                return await self._earlier(org, existing_id, request_id, digest, wait)
            assert claim is not None
            try:
                session_id, run_id, committed = await make(digest)
                await committed  # the unique request_id decides between replicas
            except RequestIdTaken:
                claim.release()
                continue
            except BaseException:
                claim.release()
                raise
            claim.resolve(session_id, committed)
            return await self._answer(org, session_id, run_id, committed, wait)

    async def _answer(
        self, org: str, session_id: str, run_id: str, committed: asyncio.Future[None], wait: bool
    ) -> SessionView:
        if wait:
            await self._flow_runs.finished_by_id(org, run_id)
        else:
            await committed
        return await self.get(org, session_id)

    async def _earlier(
        self, org: str, session_id: str, request_id: str, digest: str, wait: bool
    ) -> SessionView:
        """The session an earlier request with this request_id made, if it was this request."""
        view = await self.get(org, session_id)
        if view.session.request_digest and view.session.request_digest != digest:
            raise AlreadyExists.request_id_reused(request_id)
        if wait:
            for run in await self._leases.active_runs(session_id):
                await self._flow_runs.finished_by_id(org, run.id)
            view = await self.get(org, session_id)
        return view

    async def _create(
        self,
        org: str,
        flow_id: str,
        inputs: dict[str, Any],
        version_number: int,
        spec: NewSession,
        digest: str,
    ) -> tuple[str, str, asyncio.Future[None]]:
        flow, version = await self._flow_runs.flow_and_version(
            org, flow_id, version_number, "live_flow_id", "version"
        )
        problems = check_json_size(inputs, "inputs", self._limits) + check_inputs(
            inputs, version, "inputs"
        )
        if problems:
            raise InvalidArgument(problems)
        await self._flow_runs.check_capacity(org)
        session = self._flow_runs.new_session(org, flow, version, inputs, spec)
        session.request_digest = digest
        state = self._engine.adopt_session(session)
        run = self._flow_runs.new_run(org, flow.id, session.id, version, inputs, RunOptions(), "")
        committed = self._engine.start(state, run, version, new_session=True)
        return session.id, run.id, committed

    async def get(self, org: str, session_id: str, field_name: str = "id") -> SessionView:
        require_id(field_name, session_id, "session")
        found = await self._store.session_with_steps(org, session_id)
        if found is None:
            raise NotFound("session", session_id)
        session, steps = found
        if session.status is not SessionStatus.EXPIRED and self._clock() >= session.expires_at:
            # Only the holder of the lease may change the session; a holder elsewhere is
            # running it, and it expires when that run stops.
            with contextlib.suppress(HeldElsewhere):
                async with self._engine.session_state(org, session_id) as state:
                    await self._engine.expire_if_due(state)
            found = await self._store.session_with_steps(org, session_id)
            if found is None:
                raise NotFound("session", session_id)
            session, steps = found
        versions = await self._flows.load_versions({session.flow_version_id})
        return SessionView(session, steps, versions.get(session.flow_version_id))

    async def list(
        self, org: str, flow_id: str, status: str, page_size: int, page_token: str
    ) -> Listed[Session]:
        page = parse_page(page_size, page_token, self._limits, "sessions", org, flow_id, status)
        found = await self._store.list_sessions(org, flow_id, status, page)
        return listed(found, page, "sessions", org, flow_id, status)

    async def submit_input(
        self, org: str, session_id: str, answer: str, step_id: str, request_id: str, wait: bool
    ) -> SessionView:
        require_id("session_id", session_id, "session")
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidArgument.one("request_id", f"at most {MAX_REQUEST_ID_CHARS} characters")
        if len(answer) > self._limits.max_user_input_chars:
            raise InvalidArgument.one(
                "user_input", f"at most {self._limits.max_user_input_chars} characters"
            )
        async with self._hold(org, session_id) as state:
            run_id = await self._engine.submit_input(state, answer, step_id, request_id)
        if request_id:
            # The engine answers a known request_id with the run it resumed then. Read after
            # it (this request's own answer is committed by now, so it is found too): the
            # step answered with this id must have been answered with this request.
            answered = await self._store.step_by_input_request(session_id, request_id)
            if answered is not None and (
                answered.user_input != answer or step_id not in ("", answered.id)
            ):
                raise AlreadyExists.request_id_reused(request_id)
        if wait:
            await self._flow_runs.finished_by_id(org, run_id)
        return await self.get(org, session_id)

    def _hold(self, org: str, session_id: str) -> AbstractAsyncContextManager[SessionState]:
        """The session's lease for a change of its own; a replica running one of its runs
        lets it go when the run stops, so this waits up to a lease period for it."""
        return self._engine.session_state(org, session_id, wait=self._hold_wait)

    async def cancel(self, org: str, session_id: str) -> SessionView:
        # Read as GetSession reads: a session past its expiry is expired first.
        session = (await self.get(org, session_id)).session
        if session.status is SessionStatus.EXPIRED:
            raise FailedPrecondition(
                "the session has expired",
                kind="SESSION_STATE",
                subject=f"sessions/{session_id}",
            )
        await self._stop_runs(session_id)
        async with self._hold(org, session_id) as state:
            if state.session.status is SessionStatus.WAITING_FOR_INPUT:
                waiting = await self._engine.waiting_step(state.session)
                await self._engine.cancel_run(state, waiting.run_id)
            await self._engine.mark_cancelled(state)
        return await self.get(org, session_id)

    async def _stop_runs(self, session_id: str) -> None:
        for run in await self._flow_runs.runs_going(session_id):
            with contextlib.suppress(NotFound):
                await self._flow_runs.stop_run(run)

    async def delete(self, org: str, session_id: str) -> None:
        require_id("id", session_id, "session")
        if await self._store.get_session(org, session_id) is None:
            raise NotFound("session", session_id)
        await self._stop_runs(session_id)
        async with self._hold(org, session_id) as state:
            await self._engine.delete_session(state)

    async def watch(
        self, org: str, session_id: str, after_seq: int
    ) -> AsyncIterator[EventBatch]:
        """The session's events after `after_seq`, then live ones, in lists (follow_batches)."""
        require_id("session_id", session_id, "session")
        if after_seq < 0:
            raise InvalidArgument.one("after_seq", "must not be negative")
        if await self._store.get_session(org, session_id) is None:
            raise NotFound("session", session_id)
        self._flow_runs.check_subscribers(session_id)

        async def ended() -> bool:
            session = await self._store.get_session(org, session_id)
            return session is None or session.status is SessionStatus.EXPIRED

        batches = follow_batches(self._store, self._hub, session_id, after_seq, stopped=ended)
        async for batch in batches:
            yield batch
