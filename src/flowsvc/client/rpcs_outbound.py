"""The RPCs of what flowsvc does on its own behalf: WebhookService (events POSTed out) and
ScheduleService (runs started on a clock). A mixin of `Rpcs` (rpcs.py), which `Client` is:
same conventions, one method per RPC named after it, the request's fields as keyword
arguments, the generated response messages back.

This module imports nothing of rpcs.py (rpcs.py imports it), so the helpers both need
(`new_request_id`, `field_mask`) live here and rpcs.py takes them from here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import TypeVar

from google.protobuf import empty_pb2, field_mask_pb2
from google.protobuf.message import Message

from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import schedule_service_pb2 as scs
from flowsvc.v1 import webhook_service_pb2 as whs

R = TypeVar("R", bound=Message)

_WH = "/flowsvc.v1.WebhookService/"
_SC = "/flowsvc.v1.ScheduleService/"


def new_request_id() -> str:
    return uuid.uuid4().hex


def field_mask(paths: Iterable[str] | field_mask_pb2.FieldMask) -> field_mask_pb2.FieldMask:
    """A FieldMask, or the paths of one."""
    if isinstance(paths, field_mask_pb2.FieldMask):
        return paths
    return field_mask_pb2.FieldMask(paths=list(paths))


class OutboundRpcs:
    async def _unary(
        self, method: str, request: Message, response: type[R], *, safe: bool, timeout: float | None
    ) -> R:
        raise NotImplementedError

    # -- WebhookService -------------------------------------------------------------------

    async def create_webhook(
        self, *, webhook: pb.Webhook, timeout: float | None = None
    ) -> pb.Webhook:
        """The answer alone carries the webhook's secret."""
        request = whs.CreateWebhookRequest(webhook=webhook)
        # No request_id in the contract: a retry could create a second webhook (and secret).
        return await self._unary(_WH + "CreateWebhook", request, pb.Webhook, safe=False,
                                 timeout=timeout)

    async def get_webhook(self, id: str, *, timeout: float | None = None) -> pb.Webhook:
        request = whs.GetWebhookRequest(id=id)
        return await self._unary(_WH + "GetWebhook", request, pb.Webhook, safe=True,
                                 timeout=timeout)

    async def list_webhooks(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> whs.ListWebhooksResponse:
        request = whs.ListWebhooksRequest(page_size=page_size, page_token=page_token)
        return await self._unary(_WH + "ListWebhooks", request, whs.ListWebhooksResponse,
                                 safe=True, timeout=timeout)

    async def delete_webhook(self, id: str, *, timeout: float | None = None) -> empty_pb2.Empty:
        request = whs.DeleteWebhookRequest(id=id)
        return await self._unary(_WH + "DeleteWebhook", request, empty_pb2.Empty, safe=False,
                                 timeout=timeout)

    async def list_webhook_deliveries(
        self,
        *,
        webhook_id: str,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> whs.ListWebhookDeliveriesResponse:
        request = whs.ListWebhookDeliveriesRequest(
            webhook_id=webhook_id, page_size=page_size, page_token=page_token
        )
        return await self._unary(_WH + "ListWebhookDeliveries", request,
                                 whs.ListWebhookDeliveriesResponse, safe=True, timeout=timeout)

    # -- ScheduleService ------------------------------------------------------------------

    async def create_schedule(
        self,
        *,
        schedule: pb.Schedule,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> pb.Schedule:
        request = scs.CreateScheduleRequest(
            schedule=schedule, request_id=request_id or new_request_id()
        )
        return await self._unary(_SC + "CreateSchedule", request, pb.Schedule, safe=True,
                                 timeout=timeout)

    async def get_schedule(self, id: str, *, timeout: float | None = None) -> pb.Schedule:
        request = scs.GetScheduleRequest(id=id)
        return await self._unary(_SC + "GetSchedule", request, pb.Schedule, safe=True,
                                 timeout=timeout)

    async def list_schedules(
        self,
        *,
        flow_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> scs.ListSchedulesResponse:
        request = scs.ListSchedulesRequest(
            flow_id=flow_id, page_size=page_size, page_token=page_token
        )
        return await self._unary(_SC + "ListSchedules", request, scs.ListSchedulesResponse,
                                 safe=True, timeout=timeout)

    async def update_schedule(
        self,
        *,
        schedule: pb.Schedule,
        update_mask: Iterable[str] | field_mask_pb2.FieldMask = (),
        timeout: float | None = None,
    ) -> pb.Schedule:
        request = scs.UpdateScheduleRequest(schedule=schedule, update_mask=field_mask(update_mask))
        return await self._unary(_SC + "UpdateSchedule", request, pb.Schedule, safe=False,
                                 timeout=timeout)

    async def delete_schedule(self, id: str, *, timeout: float | None = None) -> empty_pb2.Empty:
        request = scs.DeleteScheduleRequest(id=id)
        return await self._unary(_SC + "DeleteSchedule", request, empty_pb2.Empty, safe=False,
                                 timeout=timeout)

    # Pause and Resume are idempotent by definition ("pausing a paused schedule changes
    # nothing"; resuming a running one likewise): sending one twice ends in the same state as
    # sending it once, so they are retried like reads.

    async def pause_schedule(self, id: str, *, timeout: float | None = None) -> pb.Schedule:
        """Stops ticking."""
        request = scs.PauseScheduleRequest(id=id)
        return await self._unary(_SC + "PauseSchedule", request, pb.Schedule, safe=True,
                                 timeout=timeout)

    async def resume_schedule(self, id: str, *, timeout: float | None = None) -> pb.Schedule:
        """Ticks again from now on (ticks missed while paused are not run)."""
        request = scs.ResumeScheduleRequest(id=id)
        return await self._unary(_SC + "ResumeSchedule", request, pb.Schedule, safe=True,
                                 timeout=timeout)

    async def trigger_schedule(self, id: str, *, timeout: float | None = None) -> pb.FlowRun:
        """Starts one run now, outside the ticks (also while paused); answers with that run."""
        request = scs.TriggerScheduleRequest(id=id)
        # Starts a run and has no request_id in the contract: a retry could start two.
        return await self._unary(_SC + "TriggerSchedule", request, pb.FlowRun, safe=False,
                                 timeout=timeout)
