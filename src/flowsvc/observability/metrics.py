"""Prometheus metrics: gRPC server metrics under the go-grpc-prometheus names every gRPC
dashboard uses, and flowsvc's own, prefixed `flowsvc_`.

Labels stay bounded: method and code names, step types, models (set by configuration),
run statuses; flow ids only for flows named in FLOWSVC_METRICS_FLOW_IDS (others count as
"other"); never session or run ids. Each replica serves its own endpoint (one process each,
so no multiprocess mode is needed): scrape every replica.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self, flow_ids: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.flow_ids = frozenset(flow_ids)
        rpc = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter("grpc_server_started_total", "RPCs started.", rpc, registry=r)
        self.handled = Counter(
            "grpc_server_handled_total", "RPCs completed.", (*rpc, "grpc_code"), registry=r
        )
        self.received = Counter(
            "grpc_server_msg_received_total", "Stream messages received.", rpc, registry=r
        )
        self.sent = Counter("grpc_server_msg_sent_total", "Stream messages sent.", rpc, registry=r)
        self.handling = Histogram(
            "grpc_server_handling_seconds", "RPC handling time.", rpc, buckets=_LATENCY, registry=r
        )
        self.runs = Counter("flowsvc_runs_total", "Runs finished.", ("flow_id", "status"),
                            registry=r)
        self.run_seconds = Histogram(
            "flowsvc_run_duration_seconds", "Run duration, start to stop.", ("status",),
            buckets=_LATENCY, registry=r,
        )
        self.step_seconds = Histogram(
            "flowsvc_step_duration_seconds", "Step duration.", ("step_type", "status"),
            buckets=_LATENCY, registry=r,
        )
        self.model_calls = Counter(
            "flowsvc_model_calls_total", "Model calls.", ("model", "outcome"), registry=r
        )
        self.tokens = Counter(
            "flowsvc_model_tokens_total", "Model tokens.", ("model", "direction"), registry=r
        )
        self.cost = Counter("flowsvc_model_cost_usd_total", "Model cost (USD).", ("model",),
                            registry=r)
        self.model_retries = Counter(
            "flowsvc_model_retries_total", "Model requests retried.", ("model",), registry=r
        )
        self.batch_size = Histogram(
            "flowsvc_commit_batch_journals", "Journals per group commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r,
        )
        self.commit_seconds = Histogram(
            "flowsvc_commit_seconds", "Group commit latency.", buckets=_LATENCY, registry=r
        )
        self.takeovers = Counter(
            "flowsvc_lease_takeovers_total", "Sessions claimed with no live owner.", registry=r
        )
        self.fenced = Counter(
            "flowsvc_fenced_writes_total", "Writes refused: the lease was lost.", registry=r
        )
        self.eval_jobs = Counter(
            "flowsvc_eval_jobs_finished_total", "Evaluation jobs finished.", ("status",),
            registry=r,
        )
        self.active_runs = Gauge("flowsvc_active_runs", "Runs executing here.", registry=r)
        self.eval_jobs_running = Gauge(
            "flowsvc_eval_jobs_running", "Evaluation jobs running here.", registry=r
        )

    def flow_label(self, flow_id: str) -> str:
        return flow_id if flow_id in self.flow_ids else "other"

    def sample(
        self,
        active_runs: Callable[[], int],
        eval_jobs: Callable[[], int],
        subscribers: Callable[[], tuple[int, int]],
    ) -> None:
        """Gauges read at scrape time, from the objects that know: nothing on the hot path."""
        self.active_runs.set_function(active_runs)
        self.eval_jobs_running.set_function(eval_jobs)
        self.registry.register(_Subscribers(subscribers))

    def serve(self, listen: str) -> tuple[Any, Any]:
        """Serve /metrics on a thread; (server, thread). Port 0 picks a free port."""
        host, _, port = listen.rpartition(":")
        return start_http_server(int(port), addr=host or "0.0.0.0", registry=self.registry)


class _Subscribers(Collector):
    def __init__(self, read: Callable[[], tuple[int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        active, cut_off = self._read()
        yield GaugeMetricFamily("flowsvc_active_subscribers", "Open event streams.", active)
        yield CounterMetricFamily(
            "flowsvc_subscribers_cut_off", "Subscribers cut off for falling behind.", cut_off
        )
