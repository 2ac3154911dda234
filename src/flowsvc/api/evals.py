"""EvalService: parse, call one domain method, convert, return."""

from __future__ import annotations

from typing import Any

from flowsvc.api.convert import eval_job_to_pb
from flowsvc.api.guard import current_principal
from flowsvc.domain.evals import Evaluations
from flowsvc.v1 import eval_service_pb2 as svc
from flowsvc.v1 import eval_service_pb2_grpc as svc_grpc
from flowsvc.v1 import resources_pb2 as pb

Context = Any


class EvalServicer(svc_grpc.EvalServiceServicer):
    def __init__(self, evaluations: Evaluations) -> None:
        self._evals = evaluations

    async def GetEvalJob(self, request: svc.GetEvalJobRequest, context: Context) -> pb.EvalJob:
        job = await self._evals.get(current_principal().organisation_id, request.id)
        return eval_job_to_pb(job)

    async def ListEvalJobs(
        self, request: svc.ListEvalJobsRequest, context: Context
    ) -> svc.ListEvalJobsResponse:
        page = await self._evals.list(
            current_principal().organisation_id,
            request.run_id,
            request.flow_id,
            request.page_size,
            request.page_token,
        )
        return svc.ListEvalJobsResponse(
            eval_jobs=[eval_job_to_pb(j) for j in page.items], next_page_token=page.next_page_token
        )
