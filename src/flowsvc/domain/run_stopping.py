"""Stopping runs wherever they run: CancelFlowRun, the INTERRUPT and ROLLBACK strategies,
and DeleteLiveFlow's cancelling of a flow's runs in flight (part of FlowRuns)."""

from __future__ import annotations

import contextlib

from flowsvc.domain.engine import TERMINAL_RUN, Engine, HeldElsewhere
from flowsvc.domain.errors import FailedPrecondition, NotFound
from flowsvc.domain.ports import Leases
from flowsvc.domain.runs import FlowRun, RunStatus


class RunStopping:
    _engine: Engine
    _leases: Leases

    async def get_run(self, org: str, run_id: str, field_name: str = "id") -> FlowRun:
        raise NotImplementedError

    async def finished_by_id(self, org: str, run_id: str) -> FlowRun:
        raise NotImplementedError

    async def cancel_run(self, org: str, run_id: str) -> FlowRun:
        run = await self.get_run(org, run_id)
        if run.status in TERMINAL_RUN:
            raise FailedPrecondition(
                f"the run already finished ({run.status.value})",
                kind="RUN_STATE",
                subject=f"runs/{run_id}",
            )
        await self.stop_run(run)
        run = await self.get_run(org, run_id)
        if run.status is not RunStatus.CANCELLED:
            raise FailedPrecondition(
                f"the run finished ({run.status.value}) before it could be cancelled",
                kind="RUN_STATE",
                subject=f"runs/{run_id}",
            )
        return run

    async def stop_run(self, run: FlowRun) -> None:
        """Cancel the run wherever it is: this replica's task; or, when no live replica holds
        its session, here under a claim; or else by asking the holder (through the database)
        and following the run until it stops."""
        org = run.organisation_id
        if not self._engine.has_task(run.id):
            try:
                async with self._engine.session_state(org, run.session_id) as state:
                    await self._engine.cancel_run(state, run.id)
                return
            except HeldElsewhere:
                pass
            if await self._leases.request_cancel(org, run.id):
                await self.finished_by_id(org, run.id)
            return
        async with self._engine.session_state(org, run.session_id) as state:
            await self._engine.cancel_run(state, run.id)

    async def runs_going(self, session_id: str) -> list[FlowRun]:
        """The session's QUEUED and RUNNING runs, committed or (run here) not yet."""
        going = await self._leases.active_runs(session_id)
        known = {run.id for run in going}
        return going + [r for r in self._engine.local_runs(session_id) if r.id not in known]

    async def _interrupt(self, org: str, session_id: str, *, rollback: bool) -> None:
        """INTERRUPT / ROLLBACK: the session's runs going are cancelled (wherever they run);
        with rollback, those that ended cancelled leave the session as if they never ran."""
        going = await self.runs_going(session_id)
        for run in going:
            with contextlib.suppress(NotFound):
                await self.stop_run(run)
        if rollback and going:
            async with self._engine.session_state(
                org, session_id, wait=self._engine.sessions.lease_seconds * 1.5
            ) as state:
                for run in going:
                    await self._engine.rollback_run(state, run.id)

    async def stop_flow_runs(self, org: str, flow_id: str) -> None:
        """DeleteLiveFlow: the flow's runs in flight are cancelled first, on any replica."""
        going = await self._leases.active_runs_of_flow(org, flow_id)
        known = {run.id for run in going}
        going += [r for r in self._engine.local_runs(flow_id=flow_id) if r.id not in known]
        for run in going:
            with contextlib.suppress(NotFound):
                await self.stop_run(run)
