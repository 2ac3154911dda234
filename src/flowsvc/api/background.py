"""Wiring of webhooks (and their delivery worker) for create_server: kept here so the
server's own wiring only registers what this returns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from flowsvc.adapters.webhook_sender import HttpxSender
from flowsvc.api.webhooks import DeliveryRenderer, WebhookServicer
from flowsvc.config import Settings
from flowsvc.domain.flow_runs import FlowRuns
from flowsvc.domain.sessions import Sessions
from flowsvc.domain.webhook_delivery import DeliveryWorker, RetryPolicy
from flowsvc.domain.webhooks import AllowList, Webhooks
from flowsvc.store.database import Database
from flowsvc.store.journal_writer import JournalWriter
from flowsvc.store.run_store import SqlRunStore
from flowsvc.store.sql_store import SqlStore
from flowsvc.store.webhook_store import Outbox, SqlWebhookStore
from flowsvc.v1 import webhook_service_pb2, webhook_service_pb2_grpc

SERVICES = (webhook_service_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name,)


@dataclass
class Background:
    """Workers each replica runs beside the engine; started and stopped with the server."""

    workers: list[Any] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    async def stop(self) -> None:
        for worker in self.workers:
            await worker.stop()
        for close in self.closers:
            await close()


def add_webhooks(
    server: grpc.aio.Server,
    settings: Settings,
    database: Database,
    replica_id: str,
    store: SqlStore,
    writer: JournalWriter,
    run_store: SqlRunStore,
    flow_runs: FlowRuns,
    sessions: Sessions,
) -> Background:
    hooks = SqlWebhookStore(database, replica_id)
    writer.in_commit.append(Outbox(database.batch_writer.dialect).write)
    allow = AllowList(settings.http_allow_hosts)

    async def flow_exists(org: str, flow_id: str) -> bool:
        return await store.get_flow(org, flow_id) is not None

    webhooks = Webhooks(hooks, allow, flow_exists, settings.limits, settings.clock)
    flow_runs.check_run_callback = webhooks.check_run_callback
    sender = HttpxSender()
    worker = DeliveryWorker(
        hooks,
        sender,
        DeliveryRenderer(run_store, sessions),
        allow,
        settings.clock,
        poll_seconds=settings.webhook_poll_seconds,
        timeout=settings.webhook_timeout,
        retry=RetryPolicy(
            base=settings.webhook_retry_base_seconds,
            window=settings.webhook_retry_window_seconds,
        ),
    )
    writer.on_committed.append(worker.wake)
    webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server(
        WebhookServicer(webhooks), server
    )
    return Background(workers=[worker], closers=[sender.close])
