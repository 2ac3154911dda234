"""The raw RPCs: one method per RPC of the contract, named after it, taking the request's
fields as keyword arguments and returning the generated response messages.

This module is the only one that knows method paths and request types (as the service module
of Temporal's SDK); `Client` supplies the transport (`_unary`, `_follow`, `_follow_batches`):
retries, deadlines, resumption. `safe=True` marks the calls that may be sent twice: reads, and
writes carrying a request_id (filled in here when the caller gives none, so a retry is
recognised as one).
WebhookService and ScheduleService are in rpcs_outbound.py, a mixin of `Rpcs`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Mapping
from typing import Any, TypeVar

from google.protobuf import empty_pb2, field_mask_pb2, struct_pb2
from google.protobuf.message import Message

from flowsvc.client.rpcs_outbound import OutboundRpcs, field_mask, new_request_id
from flowsvc.v1 import eval_service_pb2 as es
from flowsvc.v1 import flow_run_service_pb2 as frs
from flowsvc.v1 import live_flow_service_pb2 as lfs
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss

R = TypeVar("R", bound=Message)
JsonObject = Mapping[str, Any] | struct_pb2.Struct

_LF = "/flowsvc.v1.LiveFlowService/"
_SS = "/flowsvc.v1.SessionService/"
_FR = "/flowsvc.v1.FlowRunService/"
_EV = "/flowsvc.v1.EvalService/"


def struct(value: JsonObject | None) -> struct_pb2.Struct | None:
    """Plain dicts are accepted wherever the contract has a Struct."""
    if value is None or isinstance(value, struct_pb2.Struct):
        return value
    out = struct_pb2.Struct()
    out.update(value)
    return out


class Rpcs(OutboundRpcs):
    async def _unary(
        self, method: str, request: Message, response: type[R], *, safe: bool, timeout: float | None
    ) -> R:
        raise NotImplementedError

    def _follow(
        self, request: Message, after_seq: int, timeout: float | None
    ) -> AsyncGenerator[pb.RunEvent, None]:
        raise NotImplementedError

    def _follow_batches(
        self, request: Message, after_seq: int, timeout: float | None
    ) -> AsyncGenerator[list[pb.RunEvent], None]:
        raise NotImplementedError

    # -- LiveFlowService ------------------------------------------------------------------

    async def create_live_flow(
        self,
        *,
        name: str,
        description: str = "",
        steps: Iterable[pb.Step] = (),
        step_transitions: Iterable[pb.StepTransition] = (),
        auto_eval_flow_ids: Iterable[str] = (),
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> pb.LiveFlow:
        request = lfs.CreateLiveFlowRequest(
            name=name,
            description=description,
            steps=steps,
            step_transitions=step_transitions,
            auto_eval_flow_ids=auto_eval_flow_ids,
            request_id=request_id or new_request_id(),
        )
        return await self._unary(_LF + "CreateLiveFlow", request, pb.LiveFlow, safe=True,
                                 timeout=timeout)

    async def get_live_flow(
        self,
        id: str,
        *,
        view: pb.LiveFlowView.ValueType = pb.LIVE_FLOW_VIEW_UNSPECIFIED,
        timeout: float | None = None,
    ) -> pb.LiveFlow:
        request = lfs.GetLiveFlowRequest(id=id, view=view)
        return await self._unary(_LF + "GetLiveFlow", request, pb.LiveFlow, safe=True,
                                 timeout=timeout)

    async def list_live_flows(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> lfs.ListLiveFlowsResponse:
        request = lfs.ListLiveFlowsRequest(page_size=page_size, page_token=page_token)
        return await self._unary(_LF + "ListLiveFlows", request, lfs.ListLiveFlowsResponse,
                                 safe=True, timeout=timeout)

    async def update_live_flow(
        self,
        *,
        live_flow: pb.LiveFlow,
        update_mask: Iterable[str] | field_mask_pb2.FieldMask = (),
        timeout: float | None = None,
    ) -> pb.LiveFlow:
        request = lfs.UpdateLiveFlowRequest(
            live_flow=live_flow, update_mask=field_mask(update_mask)
        )
        return await self._unary(_LF + "UpdateLiveFlow", request, pb.LiveFlow, safe=False,
                                 timeout=timeout)

    async def delete_live_flow(self, id: str, *, timeout: float | None = None) -> empty_pb2.Empty:
        request = lfs.DeleteLiveFlowRequest(id=id)
        return await self._unary(_LF + "DeleteLiveFlow", request, empty_pb2.Empty, safe=False,
                                 timeout=timeout)

    async def create_flow_version(
        self,
        *,
        flow_id: str,
        steps: Iterable[pb.Step],
        step_transitions: Iterable[pb.StepTransition] = (),
        timeout: float | None = None,
    ) -> pb.FlowVersion:
        request = lfs.CreateFlowVersionRequest(
            flow_id=flow_id, steps=steps, step_transitions=step_transitions
        )
        # No request_id in the contract: a retry could publish the version twice.
        return await self._unary(_LF + "CreateFlowVersion", request, pb.FlowVersion, safe=False,
                                 timeout=timeout)

    async def get_flow_version(self, id: str, *, timeout: float | None = None) -> pb.FlowVersion:
        request = lfs.GetFlowVersionRequest(id=id)
        return await self._unary(_LF + "GetFlowVersion", request, pb.FlowVersion, safe=True,
                                 timeout=timeout)

    async def list_flow_versions(
        self,
        *,
        flow_id: str,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> lfs.ListFlowVersionsResponse:
        request = lfs.ListFlowVersionsRequest(
            flow_id=flow_id, page_size=page_size, page_token=page_token
        )
        return await self._unary(_LF + "ListFlowVersions", request, lfs.ListFlowVersionsResponse,
                                 safe=True, timeout=timeout)

    # -- SessionService -------------------------------------------------------------------

    async def create_session(
        self,
        *,
        live_flow_id: str,
        inputs: JsonObject | None = None,
        name: str = "",
        expiration_seconds: int | None = None,
        variables: JsonObject | None = None,
        messages: Iterable[pb.Message] = (),
        customer: pb.Customer | None = None,
        version: int = 0,
        request_id: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> pb.Session:
        request = ss.CreateSessionRequest(
            live_flow_id=live_flow_id,
            inputs=struct(inputs),
            name=name,
            expiration_seconds=expiration_seconds,
            variables=struct(variables),
            messages=messages,
            customer=customer,
            version=version,
            request_id=request_id or new_request_id(),
            wait=wait,
        )
        return await self._unary(_SS + "CreateSession", request, pb.Session, safe=True,
                                 timeout=timeout)

    async def get_session(self, id: str, *, timeout: float | None = None) -> pb.Session:
        request = ss.GetSessionRequest(id=id)
        return await self._unary(_SS + "GetSession", request, pb.Session, safe=True,
                                 timeout=timeout)

    async def list_sessions(
        self,
        *,
        live_flow_id: str = "",
        status: pb.SessionStatus.ValueType = pb.SESSION_STATUS_UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> ss.ListSessionsResponse:
        request = ss.ListSessionsRequest(
            live_flow_id=live_flow_id, status=status, page_size=page_size, page_token=page_token
        )
        return await self._unary(_SS + "ListSessions", request, ss.ListSessionsResponse,
                                 safe=True, timeout=timeout)

    async def submit_user_input(
        self,
        *,
        session_id: str,
        user_input: str,
        step_id: str = "",
        wait: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> pb.Session:
        request = ss.SubmitUserInputRequest(
            session_id=session_id,
            user_input=user_input,
            step_id=step_id,
            wait=wait,
            request_id=request_id or new_request_id(),
        )
        return await self._unary(_SS + "SubmitUserInput", request, pb.Session, safe=True,
                                 timeout=timeout)

    async def fork_session(
        self,
        *,
        session_id: str,
        step_id: str,
        inputs: JsonObject | None = None,
        variables: JsonObject | None = None,
        version: int = 0,
        override: JsonObject | None = None,
        wait: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> pb.Session:
        """A new session from a completed step of `session_id`: its history before the step
        copied, then run again from it with these changes."""
        request = ss.ForkSessionRequest(
            session_id=session_id,
            step_id=step_id,
            inputs=struct(inputs),
            variables=struct(variables),
            version=version,
            override=struct(override),
            wait=wait,
            request_id=request_id or new_request_id(),
        )
        return await self._unary(_SS + "ForkSession", request, pb.Session, safe=True,
                                 timeout=timeout)

    async def cancel_session(self, id: str, *, timeout: float | None = None) -> pb.Session:
        request = ss.CancelSessionRequest(id=id)
        return await self._unary(_SS + "CancelSession", request, pb.Session, safe=False,
                                 timeout=timeout)

    async def delete_session(self, id: str, *, timeout: float | None = None) -> empty_pb2.Empty:
        request = ss.DeleteSessionRequest(id=id)
        return await self._unary(_SS + "DeleteSession", request, empty_pb2.Empty, safe=False,
                                 timeout=timeout)

    def watch_session(
        self, session_id: str, after_seq: int = 0, *, timeout: float | None = None
    ) -> AsyncGenerator[pb.RunEvent, None]:
        """Every event of the session after `after_seq`, then live ones, resuming by itself."""
        return self._follow(ss.WatchSessionRequest(session_id=session_id), after_seq, timeout)

    def watch_session_batches(
        self, session_id: str, after_seq: int = 0, *, timeout: float | None = None
    ) -> AsyncGenerator[list[pb.RunEvent], None]:
        """`watch_session`'s events, in the lists the server sends them in (a replay page, or
        what was committed together): for subscribers that act on a run's events at once.
        Never an empty list; resumes by itself, as watch_session does."""
        request = ss.WatchSessionBatchesRequest(session_id=session_id)
        return self._follow_batches(request, after_seq, timeout)

    # -- FlowRunService -------------------------------------------------------------------

    async def run_flow(
        self,
        *,
        flow_id: str,
        body: JsonObject | None = None,
        request_id: str | None = None,
        options: pb.RunOptions | None = None,
        timeout: float | None = None,
    ) -> pb.FlowRun:
        request = frs.RunFlowRequest(
            flow_id=flow_id,
            body=struct(body),
            request_id=request_id or new_request_id(),
            options=options,
        )
        return await self._unary(_FR + "RunFlow", request, pb.FlowRun, safe=True,
                                 timeout=timeout)

    def stream_run_flow(
        self,
        *,
        flow_id: str,
        body: JsonObject | None = None,
        request_id: str | None = None,
        options: pb.RunOptions | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[pb.RunEvent, None]:
        """The run's events as it goes. After a dropped connection it resumes: as WatchRun from
        the last seq once an event named the run, else by sending the same request (same
        request_id) again."""
        request = frs.StreamRunFlowRequest(
            flow_id=flow_id,
            body=struct(body),
            request_id=request_id or new_request_id(),
            options=options,
        )
        return self._follow(request, 0, timeout)

    def watch_run(
        self, run_id: str, after_seq: int = 0, *, timeout: float | None = None
    ) -> AsyncGenerator[pb.RunEvent, None]:
        """The run's events after `after_seq` until it stops, resuming by itself."""
        return self._follow(frs.WatchRunRequest(run_id=run_id), after_seq, timeout)

    async def get_flow_run(self, id: str, *, timeout: float | None = None) -> pb.FlowRun:
        request = frs.GetFlowRunRequest(id=id)
        return await self._unary(_FR + "GetFlowRun", request, pb.FlowRun, safe=True,
                                 timeout=timeout)

    async def list_flow_runs(
        self,
        *,
        flow_id: str = "",
        session_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> frs.ListFlowRunsResponse:
        request = frs.ListFlowRunsRequest(
            flow_id=flow_id, session_id=session_id, page_size=page_size, page_token=page_token
        )
        return await self._unary(_FR + "ListFlowRuns", request, frs.ListFlowRunsResponse,
                                 safe=True, timeout=timeout)

    async def cancel_flow_run(self, id: str, *, timeout: float | None = None) -> pb.FlowRun:
        request = frs.CancelFlowRunRequest(id=id)
        return await self._unary(_FR + "CancelFlowRun", request, pb.FlowRun, safe=False,
                                 timeout=timeout)

    # -- EvalService ----------------------------------------------------------------------

    async def get_eval_job(self, id: str, *, timeout: float | None = None) -> pb.EvalJob:
        request = es.GetEvalJobRequest(id=id)
        return await self._unary(_EV + "GetEvalJob", request, pb.EvalJob, safe=True,
                                 timeout=timeout)

    async def list_eval_jobs(
        self,
        *,
        run_id: str = "",
        flow_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> es.ListEvalJobsResponse:
        request = es.ListEvalJobsRequest(
            run_id=run_id, flow_id=flow_id, page_size=page_size, page_token=page_token
        )
        return await self._unary(_EV + "ListEvalJobs", request, es.ListEvalJobsResponse,
                                 safe=True, timeout=timeout)
