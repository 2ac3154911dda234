"""The composition root: settings in, a wired server out. Every concrete piece (stores,
leases, event feed, engine, use cases, telemetry, servicers) is built here and nowhere else;
`create_server(settings) -> (server, port)` builds, `serve(settings)` runs until a signal."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy.engine import make_url

from flowsvc.api.background import add_services
from flowsvc.api.evals import EvalServicer
from flowsvc.api.flow_runs import FlowRunServicer
from flowsvc.api.guard import CallGuard
from flowsvc.api.live_flows import LiveFlowServicer
from flowsvc.api.observe import CallObserver
from flowsvc.api.reflection import DocumentedPool
from flowsvc.api.server import SERVER_OPTIONS, SERVICE_NAMES, FlowServer
from flowsvc.api.sessions import SessionServicer
from flowsvc.config import Settings, normalize_database_url
from flowsvc.domain.engine import Engine
from flowsvc.domain.engine.coordinator import Coordinator
from flowsvc.domain.evals import Evaluations
from flowsvc.domain.flow_runs import FlowRuns
from flowsvc.domain.flows import FlowCatalog
from flowsvc.domain.forks import SessionForks
from flowsvc.domain.hub import Hub
from flowsvc.domain.ids import new_id
from flowsvc.domain.keys import Keys
from flowsvc.domain.pricing import Price, PriceTable
from flowsvc.domain.providers import EchoProvider, ModelProvider, Providers
from flowsvc.domain.sessions import Sessions
from flowsvc.domain.telemetry import NoTelemetry
from flowsvc.domain.tools import HttpTool
from flowsvc.observability.metrics import Metrics
from flowsvc.observability.telemetry import Observed
from flowsvc.observability.tracing import tracer_from_env
from flowsvc.store.database import Database
from flowsvc.store.dialects import replica_application_name
from flowsvc.store.eval_store import SqlEvalStore
from flowsvc.store.journal_writer import JournalWriter
from flowsvc.store.lease_store import SqlLeases
from flowsvc.store.pg_feed import PostgresEventFeed, conninfo_of
from flowsvc.store.run_store import SqlRunStore
from flowsvc.store.sql_store import SqlStore
from flowsvc.store.writer_process import WriterProcess
from flowsvc.v1 import (
    eval_service_pb2_grpc,
    flow_run_service_pb2_grpc,
    live_flow_service_pb2_grpc,
    session_service_pb2_grpc,
)

log = logging.getLogger("flowsvc.server")


def build_tools(
    settings: Settings,
) -> tuple[Providers, list[Callable[[], Awaitable[None]]], HttpTool | None]:
    """Model providers and the HTTP tool from settings: built-in echo, OpenAI-compatible
    endpoints by name, and HTTP steps only when hosts are allowed. The SDKs are imported only
    when configured (they cost start time and memory)."""
    providers: dict[str, ModelProvider] = {"builtin": EchoProvider()}
    closers: list[Callable[[], Awaitable[None]]] = []
    endpoints = dict(settings.model_endpoints)
    if settings.openai_base_url or settings.openai_api_key:
        endpoints["openai"] = {
            "base_url": settings.openai_base_url,
            "api_key": settings.openai_api_key,
        }
    for name, endpoint in endpoints.items():
        from flowsvc.adapters.openai_provider import OpenAICompatible

        key = endpoint.get("api_key") or os.environ.get(endpoint.get("api_key_env", ""), "")
        provider = OpenAICompatible(
            name,
            endpoint.get("base_url") or "https://api.openai.com/v1",
            key,
            timeout=settings.model_timeout,
            max_retries=settings.model_max_retries,
        )
        providers[name] = provider
        closers.append(provider.close)
    http_tool = None
    if settings.http_allow_hosts:
        from flowsvc.adapters.http_tool import AllowListedHttp

        allowed = AllowListedHttp(
            settings.http_allow_hosts,
            timeout=settings.http_timeout,
            max_response_bytes=settings.http_max_response_bytes,
        )
        closers.append(allowed.close)
        http_tool = allowed
    return Providers(providers), closers, http_tool


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS when a certificate is configured; mutual TLS when a client CA is too."""
    if not settings.tls_cert_file and not settings.tls_key_file:
        if settings.tls_client_ca_file:
            raise ValueError("FLOWSVC_TLS_CLIENT_CA needs FLOWSVC_TLS_CERT and FLOWSVC_TLS_KEY")
        return None
    if not (settings.tls_cert_file and settings.tls_key_file):
        raise ValueError("TLS needs both FLOWSVC_TLS_CERT and FLOWSVC_TLS_KEY")
    key = Path(settings.tls_key_file).read_bytes()
    chain = Path(settings.tls_cert_file).read_bytes()
    client_ca = (
        Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    )
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def create_server(settings: Settings) -> tuple[FlowServer, int]:
    """Build a server bound to settings.listen (port 0 picks a free port); not yet started."""
    replica_id = new_id()
    database = Database(
        normalize_database_url(settings.database_url),
        sqlite_synchronous=settings.sqlite_synchronous,
        read_pool_size=settings.read_pool_size,
        # Ended well before the lease runs out: a frozen replica's open transaction must not
        # hold its session's row when another replica comes to claim it.
        idle_transaction_limit=settings.lease_seconds / 2,
        application_name=replica_application_name(replica_id),
    )
    await database.migrate()
    store = SqlStore(database)
    writer = JournalWriter(
        database,
        replica_id,
        settings.lease_seconds,
        process=WriterProcess(
            database.url, settings.sqlite_synchronous, settings.lease_seconds, settings.log_level
        )
        if database.sqlite_file is not None
        else None,
        process_from=settings.sqlite_writer_process_from,
    )
    run_store = SqlRunStore(database, store, writer)
    leases = SqlLeases(database, replica_id, settings.lease_seconds)
    keys = Keys(store)
    hub = Hub(settings.subscriber_queue)
    feed = None
    if not database.is_sqlite:
        feed = PostgresEventFeed(
            conninfo_of(database.sync_url), replica_id, hub, run_store, settings.feed_poll_seconds
        )
        writer.on_committed.append(feed.committed)
    providers, closers, http_tool = build_tools(settings)
    metrics = Metrics(settings.metrics_flow_ids) if settings.metrics_listen else None
    tracer = tracer_from_env()
    telemetry = (
        Observed(metrics, tracer)
        if metrics is not None or tracer is not None
        else NoTelemetry()
    )
    engine = Engine(
        run_store,
        store,
        hub,
        providers,
        leases,
        lease_seconds=settings.lease_seconds,
        step_limit=settings.step_limit,
        clock=settings.clock,
        http=http_tool,
        prices=PriceTable(
            {
                m: Price(p.get("input", 0.0), p.get("output", 0.0))
                for m, p in settings.model_prices.items()
            }
        ),
        step_timeout=settings.step_timeout,
        telemetry=telemetry,
    )
    evaluations = Evaluations(
        store,
        SqlEvalStore(database, replica_id, settings.lease_seconds),
        settings.limits,
        settings.clock,
        telemetry,
    )
    flow_runs = FlowRuns(
        engine, store, run_store, hub, leases, settings.limits, settings.clock, evaluations
    )
    sessions = Sessions(
        engine,
        flow_runs,
        store,
        run_store,
        hub,
        leases,
        settings.limits,
        settings.clock,
        hold_wait=settings.lease_seconds * 1.5,
    )
    catalog = FlowCatalog(store, settings.limits, run_store, flow_runs.stop_flow_runs)

    guard = CallGuard(keys, settings.max_request_bytes, CallObserver(metrics, tracer))
    if metrics is not None:
        metrics.sample(
            engine.active_count,
            evaluations.running_count,
            lambda: (hub.subscriber_total(), hub.cut_off),
        )

        def committed(journals: int, seconds: float) -> None:
            metrics.batch_size.observe(journals)
            metrics.commit_seconds.observe(seconds)

        writer.on_batch = committed
    server = grpc.aio.server(
        interceptors=[guard],
        options=[*SERVER_OPTIONS, ("grpc.max_receive_message_length", guard.core_receive_limit)],
    )
    live_flow_service_pb2_grpc.add_LiveFlowServiceServicer_to_server(
        LiveFlowServicer(catalog), server
    )
    session_service_pb2_grpc.add_SessionServiceServicer_to_server(
        SessionServicer(
            sessions,
            SessionForks(sessions, flow_runs, run_store, engine, settings.limits),
            settings.stream_write_timeout,
        ),
        server,
    )
    flow_run_service_pb2_grpc.add_FlowRunServiceServicer_to_server(
        FlowRunServicer(flow_runs, settings.stream_write_timeout), server
    )
    eval_service_pb2_grpc.add_EvalServiceServicer_to_server(EvalServicer(evaluations), server)
    workers = add_services(
        server, settings, database, replica_id, store, writer, run_store, flow_runs, sessions
    )

    health_servicer = health.aio.HealthServicer()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME),
        server,
        pool=DocumentedPool(),  # serves the .proto comments, so `grpcurl describe` shows them
    )

    try:
        credentials = server_credentials(settings)
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        await database.close()
        raise OSError(f"cannot listen on {settings.listen}")
    flow_server = FlowServer(
        server,
        health_servicer,
        database,
        run_store,
        leases,
        engine,
        Coordinator(
            engine,
            evaluations,
            beat_seconds=settings.claim_poll_seconds,
            on_health=lambda serving: flow_server.set_health(serving),
        ),
        feed,
        hub,
        settings.expiry_sweep_seconds,
        settings.clock,
        sessions,
        evaluations,
        closers,
        workers,
        metrics,
        settings.metrics_listen,
        tracer,
    )
    writer.on_requeue = lambda _sessions: flow_server.coordinator.wake()
    return flow_server, port


async def serve(settings: Settings) -> None:
    server, port = await create_server(settings)
    await server.start()
    # What start-up built lives as long as the process: out of the collector's sight, and
    # young objects collected less often (a run makes many short-lived ones).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    host = settings.listen.rsplit(":", 1)[0]
    log.info(
        "serving",
        extra={
            "listen": f"{host}:{port}",
            "database_url": make_url(settings.database_url).render_as_string(hide_password=True),
        },
    )

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("draining", extra={"grace_seconds": settings.grace_seconds})
    await server.stop(settings.grace_seconds)
    log.info("stopped")
