"""Prometheus metrics: gRPC server metrics under the go-grpc-prometheus names every gRPC
dashboard uses, and flowsvc's own, prefixed `flowsvc_`.

Labels stay bounded: method and code names, step types, models (set by configuration),
run statuses; flow ids only for flows named in FLOWSVC_METRICS_FLOW_IDS (others count as
"other"); never session or run ids. Each replica serves its own endpoint (one process each,
so no multiprocess mode is needed): scrape every replica.

The families updated on every call, run and step are lean (`LeanCounter`, `LeanHistogram`):
a labelled series is a plain list, found once per label tuple and cached; an update is an
addition to it, with no lock; prometheus-client renders them at scrape time. Each lean family
is updated from one thread only (the event loop, the commit metrics included: the writer
reports a batch once its commit is awaited),
so no update is lost; a scrape reads a series between two updates, never in the middle of one.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class CounterSeries:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class LeanCounter(Collector):
    """A counter family (`name` without `_total`); `labels(...)` is cached per label tuple."""

    def __init__(self, name: str, doc: str, labels: Sequence[str] = ()) -> None:
        self._name, self._doc, self._labels = name, doc, tuple(labels)
        self._cells: dict[tuple[str, ...], CounterSeries] = {}
        if not self._labels:
            self._cells[()] = CounterSeries()

    def labels(self, *values: str) -> CounterSeries:
        cell = self._cells.get(values)
        if cell is None:
            cell = self._cells.setdefault(values, CounterSeries())
        return cell

    def inc(self, amount: float = 1.0) -> None:
        self._cells[()].value += amount

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self._name, self._doc, labels=self._labels)
        for values, cell in list(self._cells.items()):
            family.add_metric(values, cell.value)
        yield family


class HistogramSeries:
    """Counts per bucket (not cumulative; the last one +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class LeanHistogram(Collector):
    def __init__(
        self, name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = _LATENCY
    ) -> None:
        self._name, self._doc, self._labels = name, doc, tuple(labels)
        self._bounds = tuple(float(b) for b in buckets)
        self._les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._cells: dict[tuple[str, ...], HistogramSeries] = {}
        if not self._labels:
            self._cells[()] = HistogramSeries(self._bounds)

    def labels(self, *values: str) -> HistogramSeries:
        cell = self._cells.get(values)
        if cell is None:
            cell = self._cells.setdefault(values, HistogramSeries(self._bounds))
        return cell

    def observe(self, value: float) -> None:
        self._cells[()].observe(value)

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labels)
        for values, cell in list(self._cells.items()):
            total, buckets = 0, []
            for le, count in zip(self._les, list(cell.counts), strict=True):
                total += count
                buckets.append((le, float(total)))
            family.add_metric(values, buckets, cell.sum)
        yield family


class Metrics:
    def __init__(self, flow_ids: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.flow_ids = frozenset(flow_ids)
        rpc = ("grpc_type", "grpc_service", "grpc_method")
        self.started = LeanCounter("grpc_server_started", "RPCs started.", rpc)
        self.handled = LeanCounter("grpc_server_handled", "RPCs completed.", (*rpc, "grpc_code"))
        self.received = LeanCounter("grpc_server_msg_received", "Stream messages received.", rpc)
        self.sent = LeanCounter("grpc_server_msg_sent", "Stream messages sent.", rpc)
        self.handling = LeanHistogram("grpc_server_handling_seconds", "RPC handling time.", rpc)
        self.runs = LeanCounter("flowsvc_runs", "Runs finished.", ("flow_id", "status"))
        self.run_seconds = LeanHistogram(
            "flowsvc_run_duration_seconds", "Run duration, start to stop.", ("status",)
        )
        self.step_seconds = LeanHistogram(
            "flowsvc_step_duration_seconds", "Step duration.", ("step_type", "status")
        )
        self.model_calls = LeanCounter("flowsvc_model_calls", "Model calls.", ("model", "outcome"))
        self.tokens = LeanCounter("flowsvc_model_tokens", "Model tokens.", ("model", "direction"))
        self.cost = LeanCounter("flowsvc_model_cost_usd", "Model cost (USD).", ("model",))
        self.batch_size = LeanHistogram(
            "flowsvc_commit_batch_journals", "Journals per group commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.commit_seconds = LeanHistogram("flowsvc_commit_seconds", "Group commit latency.")
        for family in (
            self.started, self.handled, self.received, self.sent, self.handling, self.runs,
            self.run_seconds, self.step_seconds, self.model_calls, self.tokens, self.cost,
            self.batch_size, self.commit_seconds,
        ):
            r.register(family)
        self.model_retries = Counter(
            "flowsvc_model_retries_total", "Model requests retried.", ("model",), registry=r
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
