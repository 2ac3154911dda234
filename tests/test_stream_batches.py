"""WatchSessionBatches: WatchSession's events, several to a message."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from flowsvc.client import Client as AsyncClient
from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss
from tests.graphs import create_request, struct, with_input
from tests.harness import (
    ChildServer,
    Client,
    mint_key,
    run_big,
    sqlite_url,
    unread_streams_server,
    wait_until,
)

QUESTION = struct(question="q")
DELTA = pb.RUN_EVENT_TYPE_STEP_DELTA
COMPLETED = pb.RUN_EVENT_TYPE_RUN_COMPLETED


def batches(
    c: Client, session_id: str, after_seq: int = 0, **kw: float
) -> Iterator[pb.RunEventBatch]:
    request = ss.WatchSessionBatchesRequest(session_id=session_id, after_seq=after_seq)
    return c.sessions.WatchSessionBatches(request, **kw)  # type: ignore[no-any-return]


def session_with_runs(c: Client, runs: int) -> str:
    flow = c.flows.CreateLiveFlow(create_request())
    first = c.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=QUESTION))
    for _ in range(runs - 1):
        c.runs.RunFlow(
            fr.RunFlowRequest(
                flow_id=flow.id, body=QUESTION, options=pb.RunOptions(session_id=first.session_id)
            )
        )
    return first.session_id


def take_messages(stream: Iterator[pb.RunEventBatch], count: int) -> list[pb.RunEventBatch]:
    """The stream's messages until they hold `count` events with a seq (deltas kept)."""
    out: list[pb.RunEventBatch] = []
    seen = 0
    for message in stream:
        out.append(message)
        seen += sum(1 for e in message.events if e.seq)
        if seen >= count:
            stream.cancel()  # type: ignore[attr-defined]
            break
    return out


def take_events(stream: Iterator[pb.RunEventBatch], count: int) -> list[pb.RunEvent]:
    return [e for message in take_messages(stream, count) for e in message.events]


def test_a_session_replay_comes_in_fewer_messages_than_events(client: Client) -> None:
    session_id = session_with_runs(client, 3)
    messages = take_messages(batches(client, session_id), 36)
    assert len(messages) < 36
    assert all(m.events for m in messages)
    assert [e.seq for m in messages for e in m.events] == list(range(1, 37))


def test_a_message_holds_at_most_64_kib_unless_it_is_one_larger_event(client: Client) -> None:
    session_id = session_with_runs(client, 1)
    flow_id = client.sessions.GetSession(ss.GetSessionRequest(id=session_id)).live_flow_id
    run_big(client, flow_id, session_id, 4)  # events of ~50 to ~100 KB: 3 MB or so
    messages = take_messages(batches(client, session_id), 60)
    assert [e.seq for m in messages for e in m.events] == list(range(1, 61))
    assert len(messages) > 5
    assert all(m.ByteSize() <= 64 * 1024 or len(m.events) == 1 for m in messages)


@pytest.mark.parametrize("after", [0, 5, 12, 35])
def test_a_batched_replay_starts_right_after_after_seq(client: Client, after: int) -> None:
    session_id = session_with_runs(client, 3)
    events = take_events(batches(client, session_id, after), 36 - after)
    assert [e.seq for e in events] == list(range(after + 1, 37))


def test_the_batched_stream_carries_what_watch_session_sends_in_the_same_order(
    client: Client,
) -> None:
    """Runs that pause for input and stream deltas, followed live by both RPCs at once: the
    messages' events, one after the other, are WatchSession's events."""
    flow = client.flows.CreateLiveFlow(create_request(graph=with_input()))
    waiting = client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(topic="t")))
    sid = waiting.session_id
    runs = 3
    singles = client.sessions.WatchSession(ss.WatchSessionRequest(session_id=sid), timeout=60)
    grouped = batches(client, sid, timeout=60)
    got_singles: list[pb.RunEvent] = []
    got_grouped: list[pb.RunEvent] = []

    def read_singles() -> None:
        for event in singles:
            got_singles.append(event)
            if sum(e.type == COMPLETED for e in got_singles) == runs:
                singles.cancel()  # type: ignore[attr-defined]
                return

    def read_grouped() -> None:
        for message in grouped:
            got_grouped.extend(message.events)
            if sum(e.type == COMPLETED for e in got_grouped) == runs:
                grouped.cancel()  # type: ignore[attr-defined]
                return

    readers = [threading.Thread(target=read_singles), threading.Thread(target=read_grouped)]
    for t in readers:
        t.start()
    wait_until(lambda: bool(got_singles) and bool(got_grouped))
    for i in range(runs):
        if i:
            waiting = client.runs.RunFlow(
                fr.RunFlowRequest(
                    flow_id=flow.id, body=struct(topic="t"), options=pb.RunOptions(session_id=sid)
                )
            )
        assert waiting.status == pb.RUN_STATUS_WAITING_FOR_INPUT
        client.sessions.SubmitUserInput(
            ss.SubmitUserInputRequest(session_id=sid, user_input="why", wait=True)
        )
    for t in readers:
        t.join(60)
    assert any(e.type == DELTA for e in got_grouped)
    assert any(e.type == pb.RUN_EVENT_TYPE_INPUT_REQUIRED for e in got_grouped)
    assert got_grouped == got_singles


def test_a_live_run_on_an_instant_model_comes_in_one_message_with_its_deltas(
    client: Client,
) -> None:
    """The builtin model answers within the step: its deltas are published with the run's
    one commit, between each step's STEP_STARTED and STEP_COMPLETED, not a commit apiece."""
    session_id = session_with_runs(client, 1)
    flow_id = client.sessions.GetSession(ss.GetSessionRequest(id=session_id)).live_flow_id
    # From seq 11: the replayed last event says the subscription is live.
    stream = batches(client, session_id, 11, timeout=60)
    received: list[pb.RunEventBatch] = []

    def read() -> None:
        for message in stream:
            received.append(message)
            if any(e.type == COMPLETED and e.seq > 12 for e in message.events):
                stream.cancel()  # type: ignore[attr-defined]
                return

    reader = threading.Thread(target=read)
    reader.start()
    wait_until(lambda: bool(received))
    client.runs.RunFlow(
        fr.RunFlowRequest(
            flow_id=flow_id, body=QUESTION, options=pb.RunOptions(session_id=session_id)
        )
    )
    reader.join(60)
    assert [e.seq for e in received[0].events] == [12]
    received = received[1:]
    assert len(received) == 1
    events = list(received[0].events)
    assert [e.seq for e in events if e.type != DELTA] == list(range(13, 25))
    deltas = [i for i, e in enumerate(events) if e.type == DELTA]
    assert len(deltas) == 3  # one per LLM step: echo answers in one chunk
    for i in deltas:
        assert events[i - 1].type == pb.RUN_EVENT_TYPE_STEP_STARTED
        assert events[i + 1].type == pb.RUN_EVENT_TYPE_STEP_COMPLETED
        assert events[i - 1].step.id == events[i].session_step_id == events[i + 1].step.id


def test_a_negative_after_seq_is_invalid(client: Client) -> None:
    session_id = session_with_runs(client, 1)
    with pytest.raises(grpc.RpcError) as info:
        next(batches(client, session_id, -1))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_another_organisations_session_is_not_found(client: Client, other_org: Client) -> None:
    session_id = session_with_runs(client, 1)
    with pytest.raises(grpc.RpcError) as info:
        next(batches(other_org, session_id))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_batched_subscriber_that_stopped_reading_is_cut_off_with_where_to_resume(
    tmp_path: Path,
) -> None:
    # A queue that never overflows here: only the write deadline can end the stream.
    with unread_streams_server(
        tmp_path / "db.sqlite", subscriber_queue=1_000_000, stream_write_timeout=0.5
    ) as unread:
        c = unread.client
        flow = c.flows.CreateLiveFlow(create_request())
        first = c.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=QUESTION))
        stalled = batches(c, first.session_id, 5, timeout=120)
        run_big(c, flow.id, first.session_id, 20)
        unread.wait_cut_off("WatchSessionBatches")
        with pytest.raises(grpc.RpcError) as info:
            for _ in stalled:
                pass
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = info.value.details() or ""
        assert "stopped reading" in details
        assert 5 <= int(details.rsplit("after_seq=", 1)[1]) < 12 * 21


def test_the_client_resumes_a_batched_watch_across_a_server_restart(tmp_path: Path) -> None:
    """A watcher of a session holds one watch_session_batches iterator while the server drains
    and comes back on the same address and file; a run after the restart reaches it: every
    event once, in seq order, in non-empty lists."""
    url = sqlite_url(tmp_path / "flowsvc.db")
    key = mint_key(url, "acme")
    listen = f"127.0.0.1:{_free_port()}"
    servers = [ChildServer(url, tmp_path / "s.log", listen=listen)]

    async def go() -> list[list[int]]:
        async with AsyncClient(listen, key) as client:
            flow = await client.create_live_flow(
                name="f", steps=create_request().steps,
                step_transitions=create_request().step_transitions,
            )  # fmt: skip
            run = await client.run_flow(flow_id=flow.id, body={"question": "q"})
            got: list[list[int]] = []
            async for events in client.watch_session_batches(run.session_id, timeout=60):
                got.append([e.seq for e in events if e.seq])
                seen = sum(len(g) for g in got)
                if seen == 12 and len(servers) == 1:
                    servers[0].signal(signal.SIGTERM)
                    await asyncio.to_thread(servers[0].wait)
                    # A log of its own: the first server's "serving" line is not this one's.
                    log = tmp_path / "s2.log"
                    servers.append(await asyncio.to_thread(ChildServer, url, log, None, listen))
                    await client.run_flow(
                        flow_id=flow.id,
                        body={"question": "q"},
                        options=pb.RunOptions(session_id=run.session_id),
                    )
                if seen == 24:
                    return got
            return got

    try:
        got = asyncio.run(go())
    finally:
        for server in servers:
            if server.proc.poll() is None:
                server.signal(signal.SIGTERM)
                server.wait()
    assert len(servers) == 2, "the server was never restarted"
    assert all(got)
    assert [seq for seqs in got for seq in seqs] == list(range(1, 25))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
