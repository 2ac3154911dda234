"""Event streams: replay from any seq, live follow, no gap or duplicate at the seam,
callers that drop, and subscribers that stop reading."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss
from tests.graphs import create_request, struct, with_input
from tests.harness import Client, run_big, unread_streams_server, wait_until

QUESTION = struct(question="q")
DELTA = pb.RUN_EVENT_TYPE_STEP_DELTA


def persisted(events: list[pb.RunEvent]) -> list[pb.RunEvent]:
    return [e for e in events if e.type != DELTA]


def kinds(events: list[pb.RunEvent]) -> list[str]:
    return [pb.RunEventType.Name(e.type).removeprefix("RUN_EVENT_TYPE_") for e in persisted(events)]


def test_stream_run_flow_sends_every_event_until_complete(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    events = list(
        client.runs.StreamRunFlow(fr.StreamRunFlowRequest(flow_id=flow.id, body=QUESTION))
    )
    assert kinds(events) == ["RUN_STARTED"] + ["STEP_STARTED", "STEP_COMPLETED"] * 5 + [
        "RUN_COMPLETED"
    ]
    assert [e.seq for e in persisted(events)] == list(range(1, 13))
    assert events[-1].run.status == pb.RUN_STATUS_COMPLETE
    assert events[-1].run.response.startswith("Improve:")


def test_deltas_come_between_their_step_events_and_add_up_to_the_result(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    events = list(
        client.runs.StreamRunFlow(fr.StreamRunFlowRequest(flow_id=flow.id, body=QUESTION))
    )
    for i, e in enumerate(events):
        if e.type == DELTA:
            started = next(
                x for x in reversed(events[:i]) if x.type == pb.RUN_EVENT_TYPE_STEP_STARTED
            )
            completed = next(x for x in events[i:] if x.type == pb.RUN_EVENT_TYPE_STEP_COMPLETED)
            assert started.step.id == e.session_step_id == completed.step.id
            assert e.delta == completed.step.result
            assert e.seq == 0


def test_stream_ends_when_input_is_required(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request(graph=with_input()))
    events = list(
        client.runs.StreamRunFlow(fr.StreamRunFlowRequest(flow_id=flow.id, body=struct(topic="t")))
    )
    assert kinds(events)[-1] == "INPUT_REQUIRED"
    assert events[-1].step.step.name == "ask"
    assert events[-1].step.prompt == "What do you want to know about t?"


@pytest.fixture(scope="module")
def finished_run(client: Client) -> pb.FlowRun:
    flow = client.flows.CreateLiveFlow(create_request())
    return client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=QUESTION))


@pytest.mark.parametrize("after", range(0, 13))
def test_watch_run_replays_exactly_the_events_after_any_seq(
    client: Client, finished_run: pb.FlowRun, after: int
) -> None:
    events = list(client.runs.WatchRun(fr.WatchRunRequest(run_id=finished_run.id, after_seq=after)))
    assert [e.seq for e in events] == list(range(after + 1, 13))
    assert all(e.run_id == finished_run.id for e in events)


def test_replayed_events_equal_the_streamed_ones(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    streamed = persisted(
        list(client.runs.StreamRunFlow(fr.StreamRunFlowRequest(flow_id=flow.id, body=QUESTION)))
    )
    replayed = list(client.runs.WatchRun(fr.WatchRunRequest(run_id=streamed[0].run_id)))
    assert replayed == streamed


def test_watch_session_replays_every_run_gaplessly(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    first = client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=QUESTION))
    for _ in range(2):
        client.runs.RunFlow(
            fr.RunFlowRequest(
                flow_id=flow.id, body=QUESTION, options=pb.RunOptions(session_id=first.session_id)
            )
        )
    events = take(
        client.sessions.WatchSession(
            ss.WatchSessionRequest(session_id=first.session_id, after_seq=5)
        ),
        31,
    )
    assert [e.seq for e in events] == list(range(6, 37))


def test_a_session_watcher_gets_each_delta_between_its_step_events(client: Client) -> None:
    """Runs of instant steps commit several journals in one batch: a step's deltas still
    reach a live watcher after its STEP_STARTED and before anything committed after it."""
    flow = client.flows.CreateLiveFlow(create_request())
    first = client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=QUESTION))
    runs = 10
    # From seq 11: the first run's RUN_COMPLETED (seq 12) arrives once the watch is live.
    stream = client.sessions.WatchSession(
        ss.WatchSessionRequest(session_id=first.session_id, after_seq=11), timeout=60
    )
    received: list[pb.RunEvent] = []

    def watch() -> None:
        for event in stream:
            received.append(event)
            if sum(e.type == pb.RUN_EVENT_TYPE_RUN_COMPLETED for e in received) == runs + 1:
                stream.cancel()  # type: ignore[attr-defined]
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    wait_until(lambda: bool(received))
    for _ in range(runs):
        client.runs.RunFlow(
            fr.RunFlowRequest(
                flow_id=flow.id, body=QUESTION, options=pb.RunOptions(session_id=first.session_id)
            )
        )
    watcher.join(60)
    deltas = [i for i, e in enumerate(received) if e.type == DELTA]
    assert len(deltas) == 3 * runs  # one per LLM step of each run: echo answers in one chunk
    for i in deltas:
        last = next(e for e in reversed(received[:i]) if e.type != DELTA)
        after = next(e for e in received[i:] if e.type != DELTA)
        assert last.type == pb.RUN_EVENT_TYPE_STEP_STARTED
        assert after.type == pb.RUN_EVENT_TYPE_STEP_COMPLETED
        assert last.step.id == received[i].session_step_id == after.step.id


def take(stream: Iterator[pb.RunEvent], count: int) -> list[pb.RunEvent]:
    out: list[pb.RunEvent] = []
    for event in stream:
        if event.type != DELTA:
            out.append(event)
        if len(out) == count:
            stream.cancel()  # type: ignore[attr-defined]
            break
    return out


def test_watch_session_joins_a_live_run_mid_way_without_gap_or_duplicate(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request(graph=with_input()))
    waiting = client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(topic="t")))
    # Events 1..5 are committed (RUN_STARTED, start started/completed, ask started,
    # INPUT_REQUIRED); join after 2. The answer adds 6..11, ending with RUN_COMPLETED.
    stream = client.sessions.WatchSession(
        ss.WatchSessionRequest(session_id=waiting.session_id, after_seq=2)
    )
    received: list[pb.RunEvent] = []
    reader = threading.Thread(target=lambda: received.extend(take(stream, 9)))
    reader.start()
    client.sessions.SubmitUserInput(
        ss.SubmitUserInputRequest(session_id=waiting.session_id, user_input="why", wait=True)
    )
    reader.join(timeout=30)
    assert [e.seq for e in received] == list(range(3, 12))
    assert kinds(received)[-1] == "RUN_COMPLETED"


def test_watch_run_follows_a_waiting_run_after_the_answer(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request(graph=with_input()))
    waiting = client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(topic="t")))
    before = list(client.runs.WatchRun(fr.WatchRunRequest(run_id=waiting.id)))
    assert kinds(before)[-1] == "INPUT_REQUIRED"
    client.sessions.SubmitUserInput(
        ss.SubmitUserInputRequest(session_id=waiting.session_id, user_input="x", wait=True)
    )
    after = list(
        client.runs.WatchRun(fr.WatchRunRequest(run_id=waiting.id, after_seq=before[-1].seq))
    )
    assert [e.seq for e in persisted(after)] == list(range(before[-1].seq + 1, before[-1].seq + 7))
    assert kinds(after)[-1] == "RUN_COMPLETED"


def test_dropped_stream_leaves_the_run_going_and_it_can_be_rejoined(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request(graph=with_input()))
    stream = client.runs.StreamRunFlow(
        fr.StreamRunFlowRequest(flow_id=flow.id, body=struct(topic="t"))
    )
    first = next(iter(stream))
    stream.cancel()
    run_id = first.run_id
    rejoined = list(client.runs.WatchRun(fr.WatchRunRequest(run_id=run_id, after_seq=first.seq)))
    assert kinds(rejoined)[-1] == "INPUT_REQUIRED"
    assert [e.seq for e in persisted(rejoined)] == list(
        range(first.seq + 1, first.seq + 1 + len(persisted(rejoined)))
    )


def test_negative_after_seq_is_invalid(client: Client, finished_run: pb.FlowRun) -> None:
    with pytest.raises(grpc.RpcError) as info:
        list(client.runs.WatchRun(fr.WatchRunRequest(run_id=finished_run.id, after_seq=-1)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_many_subscribers_each_see_every_event(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request(graph=with_input()))
    waiting = client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(topic="t")))
    results: list[list[pb.RunEvent]] = [[] for _ in range(50)]
    streams = [
        client.sessions.WatchSession(ss.WatchSessionRequest(session_id=waiting.session_id))
        for _ in results
    ]
    readers = [
        threading.Thread(target=lambda s=s, r=r: r.extend(take(s, 10)))
        for s, r in zip(streams, results, strict=True)
    ]
    for t in readers:
        t.start()
    client.sessions.SubmitUserInput(
        ss.SubmitUserInputRequest(session_id=waiting.session_id, user_input="x", wait=True)
    )
    for t in readers:
        t.join(timeout=60)
    assert all([e.seq for e in r] == list(range(1, 11)) for r in results)


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """A server that cuts slow subscribers off quickly, and a client whose HTTP/2 window
    stays at its initial 64 KiB, so a stream it does not read fills up."""
    path = tmp_path_factory.mktemp("tight") / "db.sqlite"
    with unread_streams_server(path, subscriber_queue=32, stream_write_timeout=1.0) as unread:
        yield unread.client


def test_a_subscriber_that_never_reads_does_not_hold_runs_back_and_is_cut_off(
    tight_server: Client, tmp_path: Path
) -> None:
    c = tight_server
    flow = c.flows.CreateLiveFlow(create_request())
    first = c.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=QUESTION))
    stalled = c.sessions.WatchSession(ss.WatchSessionRequest(session_id=first.session_id))
    # Never read `stalled` while 60 more runs (720 events) go through the session.
    for _ in range(60):
        r = c.runs.RunFlow(
            fr.RunFlowRequest(
                flow_id=flow.id, body=QUESTION, options=pb.RunOptions(session_id=first.session_id)
            )
        )
        assert r.status == pb.RUN_STATUS_COMPLETE
    with pytest.raises(grpc.RpcError) as info:
        for _ in stalled:
            pass
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "after_seq=" in (info.value.details() or "")
    # A fresh subscriber resumes from any seq and sees the rest.
    resumed = take(
        c.sessions.WatchSession(ss.WatchSessionRequest(session_id=first.session_id, after_seq=700)),
        32,
    )
    assert [e.seq for e in resumed] == list(range(701, 733))


def test_a_write_to_a_subscriber_that_stopped_reading_times_out_with_where_to_resume(
    tmp_path: Path,
) -> None:
    # A queue that never overflows here: only the write deadline can end the stream.
    with unread_streams_server(
        tmp_path / "db.sqlite", subscriber_queue=1_000_000, stream_write_timeout=0.5
    ) as unread:
        c = unread.client
        flow = c.flows.CreateLiveFlow(create_request())
        first = c.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=QUESTION))
        stalled = c.sessions.WatchSession(
            ss.WatchSessionRequest(session_id=first.session_id, after_seq=5), timeout=120
        )
        run_big(c, flow.id, first.session_id, 20)
        unread.wait_cut_off("WatchSession")
        with pytest.raises(grpc.RpcError) as info:
            for _ in stalled:
                pass
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = info.value.details() or ""
        assert "stopped reading" in details
        assert int(details.rsplit("after_seq=", 1)[1]) >= 5
