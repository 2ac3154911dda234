"""SessionService: parse, call one domain method, convert, return."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2

from flowsvc.api.convert import (
    customer_from_pb,
    event_batches,
    message_from_pb,
    session_status_from_pb,
    session_to_pb,
    struct_to_dict,
)
from flowsvc.api.guard import current_principal
from flowsvc.api.streaming import send_batches
from flowsvc.domain.forks import ForkRequest, SessionForks
from flowsvc.domain.run_requests import NewSession
from flowsvc.domain.sessions import Sessions, SessionView
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as svc
from flowsvc.v1 import session_service_pb2_grpc as svc_grpc

Context = Any


def _view(view: SessionView) -> pb.Session:
    return session_to_pb(view.session, view.steps, view.version)


class SessionServicer(svc_grpc.SessionServiceServicer):
    def __init__(self, sessions: Sessions, forks: SessionForks, write_timeout: float) -> None:
        self._sessions = sessions
        self._forks = forks
        self._write_timeout = write_timeout

    async def CreateSession(
        self, request: svc.CreateSessionRequest, context: Context
    ) -> pb.Session:
        spec = NewSession(
            name=request.name,
            expiration_seconds=request.expiration_seconds
            if request.HasField("expiration_seconds")
            else None,
            variables=struct_to_dict(request.variables),
            messages=[message_from_pb(m, f"messages[{i}]") for i, m in enumerate(request.messages)],
            customer=customer_from_pb(request.customer) if request.HasField("customer") else None,
            request_id=request.request_id,
        )
        view = await self._sessions.create(
            current_principal().organisation_id,
            request.live_flow_id,
            struct_to_dict(request.inputs),
            request.version,
            spec,
            request.wait,
        )
        return _view(view)

    async def GetSession(self, request: svc.GetSessionRequest, context: Context) -> pb.Session:
        return _view(await self._sessions.get(current_principal().organisation_id, request.id))

    async def ListSessions(
        self, request: svc.ListSessionsRequest, context: Context
    ) -> svc.ListSessionsResponse:
        page = await self._sessions.list(
            current_principal().organisation_id,
            request.live_flow_id,
            session_status_from_pb(request.status, "status"),
            request.page_size,
            request.page_token,
        )
        return svc.ListSessionsResponse(
            sessions=[session_to_pb(s) for s in page.items], next_page_token=page.next_page_token
        )

    async def SubmitUserInput(
        self, request: svc.SubmitUserInputRequest, context: Context
    ) -> pb.Session:
        view = await self._sessions.submit_input(
            current_principal().organisation_id,
            request.session_id,
            request.user_input,
            request.step_id,
            request.request_id,
            request.wait,
        )
        return _view(view)

    async def CancelSession(
        self, request: svc.CancelSessionRequest, context: Context
    ) -> pb.Session:
        return _view(await self._sessions.cancel(current_principal().organisation_id, request.id))

    async def DeleteSession(
        self, request: svc.DeleteSessionRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._sessions.delete(current_principal().organisation_id, request.id)
        return empty_pb2.Empty()

    async def WatchSession(self, request: svc.WatchSessionRequest, context: Context) -> None:  # type: ignore[override]
        events = self._sessions.watch(
            current_principal().organisation_id, request.session_id, request.after_seq
        )
        await send_batches(context, events, self._write_timeout, request.after_seq)

    async def WatchSessionBatches(  # type: ignore[override]
        self, request: svc.WatchSessionBatchesRequest, context: Context
    ) -> None:
        events = self._sessions.watch(
            current_principal().organisation_id, request.session_id, request.after_seq
        )
        await send_batches(
            context, events, self._write_timeout, request.after_seq, encode=event_batches
        )

    async def ForkSession(self, request: svc.ForkSessionRequest, context: Context) -> pb.Session:
        fork = ForkRequest(
            session_id=request.session_id,
            step_id=request.step_id,
            inputs=struct_to_dict(request.inputs),
            variables=struct_to_dict(request.variables),
            version=request.version,
            override=struct_to_dict(request.override),
            wait=request.wait,
            request_id=request.request_id,
        )
        return _view(await self._forks.fork(current_principal().organisation_id, fork))
