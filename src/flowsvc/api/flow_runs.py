"""FlowRunService: parse, call one domain method, convert, return."""

from __future__ import annotations

from typing import Any

from flowsvc.api.convert import run_options_from_pb, run_to_pb, struct_to_dict
from flowsvc.api.guard import current_principal
from flowsvc.api.streaming import send_events
from flowsvc.domain.flow_runs import FlowRuns
from flowsvc.v1 import flow_run_service_pb2 as svc
from flowsvc.v1 import flow_run_service_pb2_grpc as svc_grpc
from flowsvc.v1 import resources_pb2 as pb

Context = Any


class FlowRunServicer(svc_grpc.FlowRunServiceServicer):
    def __init__(self, runs: FlowRuns, write_timeout: float) -> None:
        self._runs = runs
        self._write_timeout = write_timeout

    async def RunFlow(self, request: svc.RunFlowRequest, context: Context) -> pb.FlowRun:
        run = await self._runs.run_flow(
            current_principal().organisation_id,
            request.flow_id,
            struct_to_dict(request.body),
            request.request_id,
            run_options_from_pb(request.options),
        )
        return run_to_pb(run)

    async def StreamRunFlow(self, request: svc.StreamRunFlowRequest, context: Context) -> None:  # type: ignore[override]
        events = self._runs.stream_run_flow(
            current_principal().organisation_id,
            request.flow_id,
            struct_to_dict(request.body),
            request.request_id,
            run_options_from_pb(request.options),
        )
        await send_events(context, events, self._write_timeout)

    async def WatchRun(self, request: svc.WatchRunRequest, context: Context) -> None:  # type: ignore[override]
        events = self._runs.watch_run(
            current_principal().organisation_id, request.run_id, request.after_seq
        )
        await send_events(context, events, self._write_timeout, request.after_seq)

    async def GetFlowRun(self, request: svc.GetFlowRunRequest, context: Context) -> pb.FlowRun:
        return run_to_pb(await self._runs.get_run(current_principal().organisation_id, request.id))

    async def ListFlowRuns(
        self, request: svc.ListFlowRunsRequest, context: Context
    ) -> svc.ListFlowRunsResponse:
        page = await self._runs.list_runs(
            current_principal().organisation_id,
            request.flow_id,
            request.session_id,
            request.page_size,
            request.page_token,
            request.schedule_id,
        )
        return svc.ListFlowRunsResponse(
            flow_runs=[run_to_pb(r) for r in page.items], next_page_token=page.next_page_token
        )

    async def CancelFlowRun(
        self, request: svc.CancelFlowRunRequest, context: Context
    ) -> pb.FlowRun:
        run = await self._runs.cancel_run(current_principal().organisation_id, request.id)
        return run_to_pb(run)
