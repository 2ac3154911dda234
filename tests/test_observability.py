"""What an operator sees: Prometheus metrics scraped over HTTP after real calls, and spans
received by a real OTLP/HTTP endpoint on loopback (the wire protocol a collector speaks)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from flowsvc.config import Settings
from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss
from tests.fake_openai import FakeOpenAI
from tests.graphs import create_request, linear, step, struct
from tests.harness import (
    ChildServer,
    InProcessServer,
    bearer,
    connect,
    iter_lines,
    metric_count,
    metric_value,
    mint_key,
    scrape_metrics,
    sqlite_url,
    wait_until,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def _attributes(span: Any) -> dict[str, Any]:
    """A received span's attributes, each as the value it holds (string, int, bool, float)."""
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InProcessServer, str]]:
    url = sqlite_url(tmp_path_factory.mktemp("db") / "flowsvc.db")
    server = InProcessServer(
        Settings(listen="127.0.0.1:0", database_url=url, metrics_listen="127.0.0.1:0")
    )
    try:
        yield server, mint_key(url, "acme")
    finally:
        server.stop()


def test_rpc_metrics_count_calls_by_method_type_and_code(
    metered: tuple[InProcessServer, str],
) -> None:
    server, key = metered
    client = connect(server.address, bearer(key))
    flow = client.flows.CreateLiveFlow(create_request())
    client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="why?")))
    with pytest.raises(Exception):  # noqa: B017 - any error: it is the count that matters
        client.sessions.GetSession(ss.GetSessionRequest(id="00000000-0000-7000-8000-000000000000"))
    events = list(
        client.runs.StreamRunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="a")))
    )
    text = scrape_metrics(server.server.metrics_port)
    run_flow = {"grpc_service": "flowsvc.v1.FlowRunService", "grpc_method": "RunFlow"}
    assert metric_value(text, "grpc_server_started_total", grpc_type="unary", **run_flow) == 1
    assert metric_value(text, "grpc_server_handled_total", grpc_code="OK", **run_flow) == 1
    assert metric_value(text, "grpc_server_handling_seconds_count", **run_flow) == 1
    not_found = {"grpc_method": "GetSession", "grpc_code": "NOT_FOUND"}
    assert metric_value(text, "grpc_server_handled_total", **not_found) == 1
    assert metric_value(
        text, "grpc_server_msg_sent_total", grpc_type="server_stream", grpc_method="StreamRunFlow"
    ) == len(events)


def test_sent_messages_count_every_event_a_session_stream_wrote(
    metered: tuple[InProcessServer, str],
) -> None:
    """Event streams count what they write in bulk (per batch, the rest when they end), not
    per message: the count stays exact, for a replay and for live events with deltas."""
    server, key = metered
    client = connect(server.address, bearer(key))
    sent, ended_streams = _stream_counts(server, "WatchSession")

    flow = client.flows.CreateLiveFlow(create_request())
    first = client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="a")))
    second = fr.RunFlowRequest(
        flow_id=flow.id,
        body=struct(question="b"),
        options=pb.RunOptions(session_id=first.session_id),
    )
    # A replay of the finished run (12 events); then, from seq 11, its last event and, once
    # that is in (the stream is subscribed), a second run live: 12 events and the deltas of
    # its three LLM steps. Nothing else is committed: the server writes exactly these.
    for after_seq, live, expected in ((0, False, 12), (11, True, 1 + 12 + 3)):
        before, ended = sent(), ended_streams()
        stream = client.sessions.WatchSession(
            ss.WatchSessionRequest(session_id=first.session_id, after_seq=after_seq)
        )
        received = 0
        for event in stream:
            received += 1
            if live and event.seq == 12:
                client.runs.RunFlow(second)
            if received == expected:
                break
        stream.cancel()
        _until_counted(ended_streams, ended)
        assert sent() - before == received == expected


def test_a_batched_session_stream_counts_its_messages_not_its_events(
    metered: tuple[InProcessServer, str],
) -> None:
    server, key = metered
    client = connect(server.address, bearer(key))
    sent, ended_streams = _stream_counts(server, "WatchSessionBatches")
    flow = client.flows.CreateLiveFlow(create_request())
    first = client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="a")))
    again = pb.RunOptions(session_id=first.session_id)
    second = fr.RunFlowRequest(flow_id=flow.id, body=struct(question="b"), options=again)
    client.runs.RunFlow(second)
    before, ended = sent(), ended_streams()
    stream = client.sessions.WatchSessionBatches(
        ss.WatchSessionBatchesRequest(session_id=first.session_id)
    )
    messages = events = 0
    for message in stream:
        messages += 1
        events += len(message.events)
        if events == 24:  # the two runs' events, replayed
            break
    stream.cancel()
    _until_counted(ended_streams, ended)
    assert sent() - before == messages < events


def _stream_counts(
    server: InProcessServer, method: str
) -> tuple[Callable[[], float], Callable[[], float]]:
    """Readers of a server-streaming method's sent messages and of its streams ended by the
    client (CANCELLED), from the server's metrics."""
    labels = {"grpc_type": "server_stream", "grpc_method": method}

    def count(name: str, **more: str) -> float:
        return metric_count(scrape_metrics(server.server.metrics_port), name, **labels, **more)

    def sent() -> float:
        return count("grpc_server_msg_sent_total")

    def ended_streams() -> float:
        return count("grpc_server_handled_total", grpc_code="CANCELLED")

    return sent, ended_streams


def _until_counted(ended_streams: Callable[[], float], ended: float) -> None:
    """Until a stream's end is counted: once the server has handled it."""
    for _ in range(1000):
        if ended_streams() > ended:
            return
        time.sleep(0.01)


def test_flowsvc_metrics_count_runs_steps_models_and_commits(
    metered: tuple[InProcessServer, str],
) -> None:
    server, key = metered
    client = connect(server.address, bearer(key))
    before = scrape_metrics(server.server.metrics_port)
    flow = client.flows.CreateLiveFlow(create_request())
    client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="why?")))
    text = scrape_metrics(server.server.metrics_port)

    def grew(name: str, **labels: str) -> float:
        return metric_value(text, name, **labels) - metric_count(before, name, **labels)

    assert grew("flowsvc_runs_total", flow_id="other", status="COMPLETE") == 1
    assert grew("flowsvc_step_duration_seconds_count", step_type="LLM", status="COMPLETED") == 3
    assert grew("flowsvc_model_calls_total", model="builtin/echo", outcome="ok") == 3
    assert grew("flowsvc_commit_seconds_count") >= 1
    assert metric_value(text, "flowsvc_active_runs") == 0
    assert metric_value(text, "flowsvc_active_subscribers") == 0


def test_metrics_are_off_unless_asked_for(tmp_path: Path) -> None:
    server = InProcessServer(
        Settings(listen="127.0.0.1:0", database_url=sqlite_url(tmp_path / "db.sqlite"))
    )
    try:
        assert server.server.metrics is None and server.server.metrics_port == 0
    finally:
        server.stop()


class Collector:
    """An OTLP/HTTP trace endpoint: POST /v1/traces with an ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        collector.spans.extend(scope.spans)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()


def test_spans_continue_the_callers_trace_down_to_each_step(tmp_path: Path) -> None:
    collector = Collector()
    url = sqlite_url(tmp_path / "db.sqlite")
    server = ChildServer(
        url,
        tmp_path / "server.log",
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_SERVICE_NAME": "flowsvc-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    try:
        key = mint_key(url, "acme")
        caller = [*bearer(key), ("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01")]
        client = connect(server.address, caller)
        flow = connect(server.address, bearer(key)).flows.CreateLiveFlow(create_request())
        run = client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="q")))
        wait_until(lambda: any(s.name == "step end" for s in collector.spans))
    finally:
        server.signal(signal.SIGTERM)
        server.wait()
        collector.close()
    ours = [s for s in collector.spans if s.trace_id.hex() == TRACE_ID]
    by_name = {s.name: s for s in ours}
    rpc = by_name["flowsvc.v1.FlowRunService/RunFlow"]
    assert rpc.parent_span_id.hex() == CALLER_SPAN
    assert rpc.kind == rpc.SPAN_KIND_SERVER
    assert _attributes(rpc)["rpc.grpc.status_code"] == 0
    run_span = by_name["run"]
    assert run_span.parent_span_id == rpc.span_id
    assert _attributes(run_span)["flowsvc.run_id"] == run.id
    steps = {s.name: s for s in ours if s.parent_span_id == run_span.span_id}
    assert {"step start", "step draft", "step critique", "step final", "step end"} == set(steps)
    draft = _attributes(steps["step draft"])
    assert draft["flowsvc.step.type"] == "LLM"
    assert draft["flowsvc.step.outcome"] == "COMPLETED"
    assert draft["gen_ai.request.model"] == "builtin/echo"
    assert "gen_ai.usage.input_tokens" in draft
    # The builtin model answers in the process: no client span, no call to propagate to.
    assert not [s for s in ours if s.kind == s.SPAN_KIND_CLIENT]
    assert {s.name for s in ours} == {rpc.name, "run", *steps}
    # The call's log line carries the trace, the organisation, the run and its session.
    line = next(
        e
        for e in iter_lines(tmp_path / "server.log")
        if e.get("msg") == "rpc" and e.get("method", "").endswith("/RunFlow")
    )
    assert line["trace_id"] == TRACE_ID
    assert (line["organisation_id"], line["run_id"], line["session_id"]) == (
        "acme",
        run.id,
        run.session_id,
    )


def test_a_model_call_over_the_network_is_a_client_span_whose_context_goes_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = Collector()
    fake = FakeOpenAI()
    for name, value in {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{collector.url}/v1/traces",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }.items():
        monkeypatch.setenv(name, value)
    url = sqlite_url(tmp_path / "db.sqlite")
    server = InProcessServer(
        Settings(
            listen="127.0.0.1:0",
            database_url=url,
            openai_base_url=f"{fake.url}/v1",
            openai_api_key="sk-test",
        )
    )
    try:
        client = connect(server.address, bearer(mint_key(url, "acme")))
        graph = linear(
            step("start", "START"),
            step("ask", "LLM", "Tell me", llm=pb.LlmConfig(model="openai/stream")),
            step("end", "END", "${ask.result}"),
        )
        flow = client.flows.CreateLiveFlow(create_request(graph=graph))
        client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="q")))
        wait_until(lambda: any(s.name == "step end" for s in collector.spans))
    finally:
        server.stop()
        collector.close()
        fake.close()
    call = next(s for s in collector.spans if s.name == "chat openai/stream")
    ask = next(s for s in collector.spans if s.name == "step ask")
    assert call.kind == call.SPAN_KIND_CLIENT
    assert (call.parent_span_id, call.trace_id) == (ask.span_id, ask.trace_id)
    usage = {"gen_ai.usage.input_tokens": 11, "gen_ai.usage.output_tokens": 7}
    assert usage.items() <= _attributes(call).items()
    assert (usage | {"gen_ai.request.model": "openai/stream"}).items() <= _attributes(ask).items()
    # The model server received the client span's context: its spans would join the trace.
    sent = fake.headers[-1]["traceparent"]
    assert sent == f"00-{call.trace_id.hex()}-{call.span_id.hex()}-01"


def test_no_call_line_is_lost_when_the_server_is_stopped(tmp_path: Path) -> None:
    """Call lines are written in batches; SIGTERM writes the batch that was still waiting."""
    url = sqlite_url(tmp_path / "db.sqlite")
    server = ChildServer(url, tmp_path / "server.log")
    try:
        client = connect(server.address, bearer(mint_key(url, "acme")))
        calls = 40
        for _ in range(calls):
            with pytest.raises(Exception):  # noqa: B017 - NOT_FOUND: a call all the same
                client.sessions.GetSession(
                    ss.GetSessionRequest(id="00000000-0000-7000-8000-000000000000")
                )
    finally:
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
    lines = list(iter_lines(tmp_path / "server.log"))
    assert sum(e.get("msg") == "rpc" and e["code"] == "NOT_FOUND" for e in lines) == calls
    assert lines[-1]["msg"] == "stopped"  # and in the order they were written
