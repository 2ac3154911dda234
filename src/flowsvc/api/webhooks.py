"""WebhookService, and what a delivery's `data` is: the FlowRun, Session or EvalJob it
reports, in the proto JSON mapping (field names as in the .proto, as grpcurl shows them)."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2, json_format
from google.protobuf.message import Message

from flowsvc.api.convert import eval_job_to_pb, run_to_pb, session_to_pb, timestamp
from flowsvc.api.guard import current_principal
from flowsvc.domain.errors import NotFound
from flowsvc.domain.ports import RunStore
from flowsvc.domain.sessions import Sessions
from flowsvc.domain.webhooks import Webhook, WebhookDelivery, Webhooks
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import webhook_service_pb2 as svc
from flowsvc.v1 import webhook_service_pb2_grpc as svc_grpc

Context = Any
_STATUS = {
    "PENDING": pb.WEBHOOK_DELIVERY_STATUS_PENDING,
    "DELIVERED": pb.WEBHOOK_DELIVERY_STATUS_DELIVERED,
    "FAILED": pb.WEBHOOK_DELIVERY_STATUS_FAILED,
}


def webhook_to_pb(w: Webhook, *, with_secret: bool = False) -> pb.Webhook:
    return pb.Webhook(
        id=w.id,
        url=w.url,
        event_types=w.event_types,
        flow_id=w.flow_id,
        secret=w.secret if with_secret else "",
        created_at=timestamp(w.created_at),
    )


def delivery_to_pb(d: WebhookDelivery) -> pb.WebhookDelivery:
    out = pb.WebhookDelivery(
        id=d.id,
        webhook_id=d.webhook_id,
        event_type=d.event_type,
        session_id=d.session_id,
        run_id=d.run_id,
        status=_STATUS[d.status.value],
        attempts=d.attempts,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        created_at=timestamp(d.created_at),
        delivered_at=timestamp(d.delivered_at),
    )
    if d.status.value == "PENDING":
        out.next_attempt_time.FromMilliseconds(d.next_attempt_ms)
    return out


def proto_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class DeliveryRenderer:
    """Loads what a delivery reports: the run or evaluation job as its event recorded it,
    the session as GetSession shows it when the delivery is sent."""

    def __init__(self, runs: RunStore, sessions: Sessions) -> None:
        self._runs = runs
        self._sessions = sessions

    async def __call__(self, d: WebhookDelivery) -> dict[str, Any] | None:
        if d.event_type == "session.waiting_for_input":
            try:
                view = await self._sessions.get(d.organisation_id, d.session_id)
            except NotFound:
                return None
            return proto_json(session_to_pb(view.session, view.steps, view.version))
        found = await self._runs.events_after(d.session_id, d.seq - 1, "", 1)
        if not found or found[0].seq != d.seq:
            return None
        event = found[0]
        if event.eval_job is not None:
            return proto_json(eval_job_to_pb(event.eval_job))
        if event.run is not None:
            return proto_json(run_to_pb(event.run))
        return None


class WebhookServicer(svc_grpc.WebhookServiceServicer):
    def __init__(self, webhooks: Webhooks) -> None:
        self._webhooks = webhooks

    async def CreateWebhook(
        self, request: svc.CreateWebhookRequest, context: Context
    ) -> pb.Webhook:
        w = request.webhook
        created = await self._webhooks.create(
            current_principal().organisation_id, w.url, list(w.event_types), w.flow_id
        )
        return webhook_to_pb(created, with_secret=True)

    async def GetWebhook(self, request: svc.GetWebhookRequest, context: Context) -> pb.Webhook:
        return webhook_to_pb(
            await self._webhooks.get(current_principal().organisation_id, request.id)
        )

    async def ListWebhooks(
        self, request: svc.ListWebhooksRequest, context: Context
    ) -> svc.ListWebhooksResponse:
        page = await self._webhooks.list(
            current_principal().organisation_id, request.page_size, request.page_token
        )
        return svc.ListWebhooksResponse(
            webhooks=[webhook_to_pb(w) for w in page.items], next_page_token=page.next_page_token
        )

    async def DeleteWebhook(
        self, request: svc.DeleteWebhookRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._webhooks.delete(current_principal().organisation_id, request.id)
        return empty_pb2.Empty()

    async def ListWebhookDeliveries(
        self, request: svc.ListWebhookDeliveriesRequest, context: Context
    ) -> svc.ListWebhookDeliveriesResponse:
        page = await self._webhooks.deliveries(
            current_principal().organisation_id,
            request.webhook_id,
            request.page_size,
            request.page_token,
        )
        return svc.ListWebhookDeliveriesResponse(
            webhook_deliveries=[delivery_to_pb(d) for d in page.items],
            next_page_token=page.next_page_token,
        )
