"""Running flows: the use cases behind FlowRunService (and the runs CreateSession starts)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from flowsvc.domain.engine import Engine
from flowsvc.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RequestIdTaken,
    ResourceExhausted,
)
from flowsvc.domain.evals import MODE_BLOCK, MODE_SKIP, Evaluations, run_mode
from flowsvc.domain.flows import MAX_REQUEST_ID_CHARS
from flowsvc.domain.hub import Hub
from flowsvc.domain.idempotency import RequestClaims, request_digest
from flowsvc.domain.ids import new_id, require_id
from flowsvc.domain.limits import Limits
from flowsvc.domain.model import FlowVersion, LiveFlow
from flowsvc.domain.paging import Listed, listed, parse_page
from flowsvc.domain.ports import FlowStore, Leases, RunStore
from flowsvc.domain.run_requests import (
    DEFAULT_EXPIRATION,
    NewSession,
    RunOptions,
    Started,
    check_inputs,
    check_json_size,
    check_overrides,
)
from flowsvc.domain.runs import (
    FlowRun,
    RunEvent,
    Session,
    SessionStatus,
)
from flowsvc.domain.session_runs import SessionRuns
from flowsvc.domain.watch import follow


class FlowRuns(SessionRuns):
    def __init__(
        self,
        engine: Engine,
        flows: FlowStore,
        runs: RunStore,
        hub: Hub,
        leases: Leases,
        limits: Limits,
        clock: Callable[[], datetime],
        evaluations: Evaluations | None = None,
    ) -> None:
        self._leases = leases
        self._evals = evaluations
        if evaluations is not None:
            evaluations.bind(self)
            evaluations.on_finished = self._evaluation_finished
            engine.on_complete = self._start_evaluations
        self._engine = engine
        self._flows = flows
        self._runs = runs
        self._hub = hub
        self._limits = limits
        self._clock = clock
        self.claims = RequestClaims()
        # Checks RunOptions.webhook_url (allow-list, organisation secret); set when wired.
        self.check_run_callback: Callable[[str, str, str], Awaitable[None]] | None = None

    # -- evaluations ---------------------------------------------------------------------

    async def _start_evaluations(self, run: FlowRun) -> None:
        assert self._evals is not None
        await self._evals.start(run)

    async def _evaluation_finished(self, job: Any) -> None:
        run = await self._runs.get_run(job.organisation_id, job.run_id)
        if run is not None:
            await self._engine.record_eval_completed(run, job)

    async def _with_blocking_evals(self, run: FlowRun) -> FlowRun:
        """In BLOCK mode the answer waits for the run's evaluation job."""
        if self._evals is None or not run.eval_job_id:
            return run
        if run_mode(run.eval_options) != MODE_BLOCK:
            return run
        job = await self._evals.finished(run.eval_job_id)
        run.eval_job = job or await self._evals.get(run.organisation_id, run.eval_job_id)
        return run

    # -- helpers shared with sessions ----------------------------------------------------

    async def flow_and_version(
        self, org: str, flow_id: str, number: int, flow_field: str, version_field: str
    ) -> tuple[LiveFlow, FlowVersion]:
        require_id(flow_field, flow_id, "live flow")
        flow = await self._flows.get_flow(org, flow_id)
        if flow is None:
            raise NotFound("live flow", flow_id)
        if number < 0:
            raise InvalidArgument.one(version_field, "must not be negative")
        if number:
            version = await self._flows.get_version_number(org, flow_id, number)
            if version is None:
                raise NotFound("flow version", f"{flow_id} v{number}")
            return flow, version
        if flow.current_version is None:
            raise FailedPrecondition(
                "the flow has no version yet: publish one with CreateFlowVersion",
                kind="FLOW_STATE",
                subject=f"live_flows/{flow_id}",
            )
        return flow, flow.current_version

    async def check_capacity(self, org: str) -> None:
        """Every replica's runs count against one limit (see run_counts.py)."""
        active = self._engine.run_counts.of(org)
        if active >= self._limits.max_active_runs_per_org:
            raise ResourceExhausted(
                f"the organisation has {active} runs going; the limit is "
                f"{self._limits.max_active_runs_per_org} (max_active_runs_per_org)",
                subject=f"organisations/{org}",
                limit="max_active_runs_per_org",
            )

    def new_session(
        self,
        org: str,
        flow: LiveFlow,
        version: FlowVersion,
        inputs: dict[str, Any],
        spec: NewSession,
    ) -> Session:
        now = self._clock()
        expiration = spec.expiration_seconds or DEFAULT_EXPIRATION
        return Session(
            id=new_id(),
            organisation_id=org,
            live_flow_id=flow.id,
            flow_version_id=version.id,
            version=version.version,
            name=spec.name,
            status=SessionStatus.NEW,
            inputs=inputs,
            variables=spec.variables,
            messages=[
                replace(m, run_id="", position=n) for n, m in enumerate(spec.messages, start=1)
            ],
            message_count=len(spec.messages),
            customer=spec.customer,
            expiration_seconds=expiration,
            expires_at=now + timedelta(seconds=expiration),
            created_at=now,
            updated_at=now,
            request_id=spec.request_id,
        )

    # -- use cases -------------------------------------------------------------------

    async def start(
        self,
        org: str,
        flow_id: str,
        body: dict[str, Any],
        request_id: str,
        options: RunOptions,
        *,
        wait_for_commit: bool = False,
        parent_run_id: str = "",
    ) -> Started:
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidArgument.one("request_id", f"at most {MAX_REQUEST_ID_CHARS} characters")
        if not request_id:
            return await self._start(
                org, flow_id, body, "", options, wait_for_commit, parent_run_id
            )
        digest = request_digest("RunFlow", flow_id, body, options)

        async def lookup() -> str | None:
            found = await self._runs.run_by_request(org, request_id)
            return None if found is None else found.id

        while True:
            existing_id, claim = await self.claims.claim(("run", org, request_id), lookup)
            if existing_id is not None:
                return await self._earlier(org, existing_id, request_id, digest)
            assert claim is not None
            try:
                # The unique (organisation, request_id) decides between replicas: the first
                # commit must land before this request may answer as the one that ran.
                started = await self._start(
                    org, flow_id, body, request_id, options, True, parent_run_id, digest
                )
            except RequestIdTaken:
                claim.release()
                continue  # another replica committed it first: answer with that run
            except BaseException:
                claim.release()
                raise
            assert started.committed is not None
            claim.resolve(started.run.id, started.committed)
            return started

    async def _earlier(self, org: str, run_id: str, request_id: str, digest: str) -> Started:
        """The run an earlier request with this request_id started, if it was this request."""
        existing = await self.get_run(org, run_id)
        if existing.request_digest and existing.request_digest != digest:
            raise AlreadyExists.request_id_reused(request_id)
        existing = await self.finished_by_id(org, existing.id)
        session = await self._runs.get_session(org, existing.session_id)
        if session is None:
            raise NotFound("session", existing.session_id)
        return Started(existing, session, 0, existing=True)

    async def _start(
        self,
        org: str,
        flow_id: str,
        body: dict[str, Any],
        request_id: str,
        options: RunOptions,
        wait_for_commit: bool,
        parent_run_id: str = "",
        digest: str = "",
    ) -> Started:
        if options.session_id:
            require_id("options.session_id", options.session_id, "session")
        flow, version = await self.flow_and_version(
            org, flow_id, options.version, "flow_id", "options.version"
        )
        problems = (
            check_json_size(body, "body", self._limits)
            + check_json_size(options.override, "options.override", self._limits)
            + check_inputs(body, version, "body")
            + check_overrides(options.override, version, "options.override")
        )
        if problems:
            raise InvalidArgument(problems)
        if options.webhook_url and self.check_run_callback is not None:
            await self.check_run_callback(org, options.webhook_url, "options.webhook_url")
        await self.check_capacity(org)
        if self._evals is not None and not parent_run_id:
            await self._evals.check(org, options.eval_options)
            if run_mode(options.eval_options) != MODE_SKIP and not options.eval_options.get("runs"):
                options.eval_options = {
                    **options.eval_options,
                    "runs": [{"flow_eval_id": f} for f in flow.auto_eval_flow_ids],
                }

        if not options.session_id:
            session = self.new_session(org, flow, version, body, NewSession())
            state = self._engine.adopt_session(session)
            run = self.new_run(
                org, flow.id, session.id, version, body, options, request_id, parent_run_id
            )
            run.request_digest = digest
            committed = self._engine.start(state, run, version, new_session=True)
            if wait_for_commit:
                await committed
            return Started(run, session, 0, committed=committed)

        return await self._start_on_session(
            org, flow, version, body, request_id, options, parent_run_id, digest, wait_for_commit
        )

    async def finished(self, started: Started) -> FlowRun:
        """The run once it stops (finished, or waiting for input). A run whose first moves
        were not committed (its replica lost the session meanwhile, or the database went away)
        is told as such: never NOT_FOUND."""
        if started.committed is not None:
            await started.committed
        return await self.finished_by_id(started.run.organisation_id, started.run.id)

    async def finished_by_id(self, org: str, run_id: str) -> FlowRun:
        """The run once it stops, wherever it runs: this replica's task, or the committed
        events of another replica's, followed until the run stops."""
        waited = await self._engine.wait(run_id)
        if waited is not None:
            return waited
        run = await self.get_run(org, run_id)
        if run.status.active:
            async for _ in self._follow_run(run, 0, limited=False):
                pass
            run = await self.get_run(org, run_id)
        return run

    async def run_flow(
        self, org: str, flow_id: str, body: dict[str, Any], request_id: str, options: RunOptions
    ) -> FlowRun:
        started = await self.start(org, flow_id, body, request_id, options)
        return await self._with_blocking_evals(await self.finished(started))

    async def stream_run_flow(
        self, org: str, flow_id: str, body: dict[str, Any], request_id: str, options: RunOptions
    ) -> AsyncIterator[RunEvent]:
        started = await self.start(org, flow_id, body, request_id, options)
        last = started.after_seq
        async for event in self._follow_run(started.run, started.after_seq):
            last = max(last, event.seq)
            yield event
        run = await self._with_blocking_evals(await self.finished(started))
        if run.eval_job is not None:
            # BLOCK: the stream ends with the evaluation results.
            for event in await self._runs.events_after(run.session_id, last, run.id, 100):
                yield event

    def _follow_run(
        self, run: FlowRun, after_seq: int, *, limited: bool = True
    ) -> AsyncIterator[RunEvent]:
        async def stopped() -> bool:
            if self._engine.has_task(run.id):
                return False
            fresh = await self._runs.get_run(run.organisation_id, run.id)
            return fresh is None or not fresh.status.active

        if limited:
            self.check_subscribers(run.session_id)
        return follow(
            self._runs, self._hub, run.session_id, after_seq, run_id=run.id, stopped=stopped
        )

    def check_subscribers(self, session_id: str) -> None:
        count = self._hub.subscriber_count(session_id)
        if count >= self._limits.max_subscribers_per_session:
            raise ResourceExhausted(
                f"the session has {count} subscribers; the limit is "
                f"{self._limits.max_subscribers_per_session} (max_subscribers_per_session)",
                subject=f"sessions/{session_id}",
                limit="max_subscribers_per_session",
            )

    async def watch_run(self, org: str, run_id: str, after_seq: int) -> AsyncIterator[RunEvent]:
        run = await self.get_run(org, run_id, "run_id")
        if after_seq < 0:
            raise InvalidArgument.one("after_seq", "must not be negative")
        async for event in self._follow_run(run, after_seq):
            yield event

    async def get_run(self, org: str, run_id: str, field_name: str = "id") -> FlowRun:
        require_id(field_name, run_id, "run")
        run = await self._runs.get_run(org, run_id)
        if run is None:
            raise NotFound("run", run_id)
        return run

    async def list_runs(
        self,
        org: str,
        flow_id: str,
        session_id: str,
        page_size: int,
        page_token: str,
        schedule_id: str = "",
    ) -> Listed[FlowRun]:
        keys = ("runs", org, flow_id, session_id, schedule_id)
        page = parse_page(page_size, page_token, self._limits, *keys)
        found = await self._runs.list_runs(org, flow_id, session_id, page, schedule_id)
        return listed(found, page, *keys)
