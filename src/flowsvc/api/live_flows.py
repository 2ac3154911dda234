"""LiveFlowService: parse, call one domain method, convert, return."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2

from flowsvc.api.convert import flow_to_pb, graph_from_pb, known_enum, version_to_pb
from flowsvc.api.guard import current_principal
from flowsvc.domain.flows import FlowCatalog
from flowsvc.v1 import live_flow_service_pb2 as svc
from flowsvc.v1 import live_flow_service_pb2_grpc as svc_grpc
from flowsvc.v1 import resources_pb2 as pb

Context = Any


class LiveFlowServicer(svc_grpc.LiveFlowServiceServicer):
    def __init__(self, catalog: FlowCatalog) -> None:
        self._catalog = catalog

    async def CreateLiveFlow(
        self, request: svc.CreateLiveFlowRequest, context: Context
    ) -> pb.LiveFlow:
        steps, transitions = graph_from_pb(request.steps, request.step_transitions)
        flow = await self._catalog.create_flow(
            current_principal().organisation_id,
            request.name,
            request.description,
            steps,
            transitions,
            list(request.auto_eval_flow_ids),
            request.request_id,
        )
        return flow_to_pb(flow)

    async def GetLiveFlow(self, request: svc.GetLiveFlowRequest, context: Context) -> pb.LiveFlow:
        flow = await self._catalog.get_flow(
            current_principal().organisation_id,
            request.id,
            full=known_enum(request.view, pb.LiveFlowView, "view") == pb.LIVE_FLOW_VIEW_FULL,
        )
        return flow_to_pb(flow)

    async def ListLiveFlows(
        self, request: svc.ListLiveFlowsRequest, context: Context
    ) -> svc.ListLiveFlowsResponse:
        page = await self._catalog.list_flows(
            current_principal().organisation_id, request.page_size, request.page_token
        )
        return svc.ListLiveFlowsResponse(
            live_flows=[flow_to_pb(f) for f in page.items], next_page_token=page.next_page_token
        )

    async def UpdateLiveFlow(
        self, request: svc.UpdateLiveFlowRequest, context: Context
    ) -> pb.LiveFlow:
        given = request.live_flow
        flow = await self._catalog.update_flow(
            current_principal().organisation_id,
            given.id,
            {
                "name": given.name,
                "description": given.description,
                "auto_eval_flow_ids": list(given.auto_eval_flow_ids),
            },
            list(request.update_mask.paths),
        )
        return flow_to_pb(flow)

    async def DeleteLiveFlow(
        self, request: svc.DeleteLiveFlowRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._catalog.delete_flow(current_principal().organisation_id, request.id)
        return empty_pb2.Empty()

    async def CreateFlowVersion(
        self, request: svc.CreateFlowVersionRequest, context: Context
    ) -> pb.FlowVersion:
        steps, transitions = graph_from_pb(request.steps, request.step_transitions)
        version = await self._catalog.create_version(
            current_principal().organisation_id, request.flow_id, steps, transitions
        )
        return version_to_pb(version)

    async def GetFlowVersion(
        self, request: svc.GetFlowVersionRequest, context: Context
    ) -> pb.FlowVersion:
        version = await self._catalog.get_version(current_principal().organisation_id, request.id)
        return version_to_pb(version)

    async def ListFlowVersions(
        self, request: svc.ListFlowVersionsRequest, context: Context
    ) -> svc.ListFlowVersionsResponse:
        page = await self._catalog.list_versions(
            current_principal().organisation_id,
            request.flow_id,
            request.page_size,
            request.page_token,
        )
        return svc.ListFlowVersionsResponse(
            flow_versions=[version_to_pb(v) for v in page.items],
            next_page_token=page.next_page_token,
        )
