"""Wiring of webhooks and schedules (and their workers) for create_server: kept here so the
server's own wiring only registers what this returns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from flowsvc.adapters.webhook_sender import HttpxSender
from flowsvc.api.schedules import ScheduleServicer
from flowsvc.api.webhooks import DeliveryRenderer, WebhookServicer
from flowsvc.config import Settings
from flowsvc.domain.flow_runs import FlowRuns
from flowsvc.domain.schedule_ticker import Ticker
from flowsvc.domain.schedules import Schedules
from flowsvc.domain.sessions import Sessions
from flowsvc.domain.webhook_delivery import DeliveryWorker, RetryPolicy
from flowsvc.domain.webhooks import AllowList, Webhooks
from flowsvc.store.database import Database
from flowsvc.store.journal_writer import JournalWriter
from flowsvc.store.run_store import SqlRunStore
from flowsvc.store.schedule_store import SqlScheduleStore
from flowsvc.store.sql_store import SqlStore
from flowsvc.store.webhook_store import Outbox, SqlWebhookStore
from flowsvc.v1 import (
    schedule_service_pb2,
    schedule_service_pb2_grpc,
    webhook_service_pb2,
    webhook_service_pb2_grpc,
)

SERVICES = (
    webhook_service_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name,
    schedule_service_pb2.DESCRIPTOR.services_by_name["ScheduleService"].full_name,
)


@dataclass
class Background:
    """Workers each replica runs beside the engine; started and stopped with the server."""

    workers: list[Any] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Run before the workers start (SQLite: leases of a killed process are given up).
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def start(self) -> None:
        for prepare in self.on_start:
            await prepare()
        for worker in self.workers:
            worker.start()

    async def stop(self) -> None:
        for worker in self.workers:
            await worker.stop()
        for close in self.closers:
            await close()


def add_services(
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
    outbox = Outbox(database.batch_writer.dialect)
    hooks = SqlWebhookStore(database, replica_id)
    writer.outbox = outbox
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
    def deliveries_written(_sessions: set[str]) -> None:
        if outbox.take_wrote():
            worker.wake()  # a commit with deliveries only: no claim query per commit

    writer.on_committed.append(deliveries_written)
    webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server(
        WebhookServicer(webhooks), server
    )
    schedule_store = SqlScheduleStore(database, replica_id)
    schedule_service_pb2_grpc.add_ScheduleServiceServicer_to_server(
        ScheduleServicer(
            Schedules(schedule_store, flow_runs, settings.limits, settings.clock)
        ),
        server,
    )
    ticker = Ticker(
        schedule_store, flow_runs, settings.clock, poll_seconds=settings.schedule_poll_seconds
    )
    # With SQLite this process is the only server: whatever a previous one leased died with it.
    forget: list[Callable[[], Awaitable[None]]] = (
        [hooks.forget_owners, schedule_store.forget_owners] if database.is_sqlite else []
    )
    return Background(workers=[worker, ticker], closers=[sender.close], on_start=forget)
