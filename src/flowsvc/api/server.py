"""The running server: health, drain, background duties, graceful shutdown. It is wired in
flowsvc.app (the composition root)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from flowsvc.api.background import SERVICES as BACKGROUND_SERVICES
from flowsvc.api.background import Background
from flowsvc.domain.engine import Engine
from flowsvc.domain.engine.coordinator import Coordinator
from flowsvc.domain.evals import Evaluations
from flowsvc.domain.hub import Hub
from flowsvc.domain.sessions import Sessions
from flowsvc.observability.metrics import Metrics
from flowsvc.store.database import Database
from flowsvc.store.lease_store import SqlLeases
from flowsvc.store.pg_feed import PostgresEventFeed
from flowsvc.store.run_store import SqlRunStore
from flowsvc.v1 import (
    eval_service_pb2,
    flow_run_service_pb2,
    live_flow_service_pb2,
    session_service_pb2,
)

log = logging.getLogger("flowsvc.server")

SERVICE_NAMES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (live_flow_service_pb2, "LiveFlowService"),
        (session_service_pb2, "SessionService"),
        (flow_run_service_pb2, "FlowRunService"),
        (eval_service_pb2, "EvalService"),
    )
) + BACKGROUND_SERVICES

SERVER_OPTIONS = [
    # Long idle streams stay alive behind proxies: ping every 30 s, give up after 10 s.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    # A second server on the same port must fail to start, not share the port silently.
    ("grpc.so_reuseport", 0),
]


@dataclass
class FlowServer:
    grpc_server: grpc.aio.Server
    health: health.aio.HealthServicer
    database: Database
    run_store: SqlRunStore
    leases: SqlLeases
    engine: Engine
    coordinator: Coordinator
    feed: PostgresEventFeed | None
    hub: Hub
    sweep_every: float
    clock: Callable[[], datetime]
    sessions: Sessions
    evaluations: Evaluations
    closers: list[Callable[[], Awaitable[None]]]
    background: Background
    metrics: Metrics | None = None
    metrics_listen: str = ""
    tracer_provider: Any = None
    metrics_port: int = 0
    _metrics_server: Any = None
    _sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.database.is_sqlite:
            self.database.hold_exclusively()
            await self.leases.forget_dead_owners()
        self.run_store.writer.start()
        self.engine.sessions.start_renewal(asyncio.get_running_loop())
        resumed = await self.engine.claim_orphans(1_000_000)
        if resumed:
            log.info("resumed interrupted runs", extra={"sessions": resumed})
        jobs = await self.evaluations.resume_unfinished()
        if jobs:
            log.info("resumed evaluation jobs", extra={"jobs": jobs})
        if self.feed is not None:
            self.feed.start()
        if self.metrics is not None and self.metrics_listen:
            self._metrics_server, _ = self.metrics.serve(self.metrics_listen)
            self.metrics_port = self._metrics_server.server_port
            log.info("metrics", extra={"listen": f"{self.metrics_listen.rpartition(':')[0]}:"
                                                 f"{self.metrics_port}"})
        self.coordinator.start()
        await self.background.start()
        await self.grpc_server.start()
        self._sweeper = asyncio.create_task(self._sweep_expired(), name="flowsvc-expiry")
        await self.set_health(True)

    async def set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def _sweep_expired(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every)
            try:
                due = await self.run_store.sessions_expired_by(self.clock(), 500)
                for org, session_id in due:
                    await self.sessions.get(org, session_id)  # expires it on the way
            except Exception:
                log.exception("expiry sweep failed")

    async def stop(self, grace: float | None) -> None:
        """Drain: report NOT_SERVING, end event streams, refuse new calls, give in-flight ones
        `grace` seconds; then stop run tasks (other replicas, or the next start, resume them)
        and close the database."""
        await self.set_health(False)
        # Event streams never finish on their own: end them now (UNAVAILABLE, with the seq to
        # resume after) so that the grace period is only spent on calls doing work.
        self.hub.shut_down()
        await self.grpc_server.stop(grace)
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.coordinator.stop()
        await self.background.stop()
        await self.evaluations.stop()
        await self.engine.stop()
        self.engine.sessions.stop_renewal()
        await self.run_store.writer.close()
        try:
            await self.leases.release_all()  # the other replicas take over at once
        except Exception:
            log.warning("could not give leases up; they expire by themselves", exc_info=True)
        if self.feed is not None:
            await self.feed.close()
        for close in self.closers:
            await close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()  # exports what is still buffered
        self.leases.close()
        await self.database.close()

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()
