"""Limits: each refused with the documented code and a message naming the limit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from flowsvc.config import Settings
from flowsvc.domain.limits import Limits
from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss
from tests.errors import invalid, rpc_error
from tests.fake_openai import FakeOpenAI
from tests.graphs import create_request, linear, step, struct, with_input
from tests.harness import Client, InProcessServer, bearer, connect, mint_key, sqlite_url, wait_until

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass
class Tight:
    client: Client
    fake: FakeOpenAI


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tight]:
    fake = FakeOpenAI()
    url = sqlite_url(tmp_path_factory.mktemp("limits") / "db.sqlite")
    limits = Limits(
        max_subscribers_per_session=2,
        max_messages_per_session=4,
        max_active_runs_per_org=1,
        max_json_bytes=1000,
    )
    server = InProcessServer(
        Settings(
            listen="127.0.0.1:0",
            database_url=url,
            limits=limits,
            max_request_bytes=64 * 1024,
            openai_base_url=f"{fake.url}/v1",
            step_timeout=30,
        )
    )
    c = connect(server.address, bearer(mint_key(url, "acme")))
    yield Tight(c, fake)
    c.close()
    server.stop()
    fake.close()


def quota_subject(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            return quota.violations[0].subject
    raise AssertionError("no QuotaFailure detail")


def test_subscribers_per_session_are_limited(tight: Tight) -> None:
    c = tight.client
    waiting = c.runs.RunFlow(
        fr.RunFlowRequest(
            flow_id=c.flows.CreateLiveFlow(create_request(graph=with_input())).id,
            body=struct(topic="t"),
        )
    )
    streams = [
        c.sessions.WatchSession(ss.WatchSessionRequest(session_id=waiting.session_id))
        for _ in range(2)
    ]
    firsts = [next(s) for s in streams]  # both are open and subscribed
    assert all(f.seq == 1 for f in firsts)
    err = rpc_error(
        lambda: next(
            c.sessions.WatchSession(ss.WatchSessionRequest(session_id=waiting.session_id))
        ),
        EXHAUSTED,
    )
    assert "max_subscribers_per_session" in (err.details() or "")
    assert quota_subject(err) == f"sessions/{waiting.session_id}"
    for s in streams:
        s.cancel()


def test_messages_per_session_are_limited(tight: Tight) -> None:
    c = tight.client
    flow = c.flows.CreateLiveFlow(create_request())
    first = c.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="q")))
    c.runs.RunFlow(
        fr.RunFlowRequest(
            flow_id=flow.id,
            body=struct(question="q"),
            options=pb.RunOptions(session_id=first.session_id),
        )
    )
    err = rpc_error(
        lambda: c.runs.RunFlow(
            fr.RunFlowRequest(
                flow_id=flow.id,
                body=struct(question="q"),
                options=pb.RunOptions(session_id=first.session_id),
            )
        ),
        EXHAUSTED,
    )
    assert "max_messages_per_session" in (err.details() or "")


def test_the_messages_a_session_was_created_with_count_toward_the_limit(tight: Tight) -> None:
    c = tight.client
    flow = c.flows.CreateLiveFlow(create_request())
    session = c.sessions.CreateSession(
        ss.CreateSessionRequest(
            live_flow_id=flow.id,
            inputs=struct(question="q"),
            messages=[
                pb.Message(role="user", content="a"),
                pb.Message(role="assistant", content="b"),
            ],
            wait=True,
        )
    )
    assert len(session.messages) == 4  # the two given, then its first run's two
    err = rpc_error(
        lambda: c.runs.RunFlow(
            fr.RunFlowRequest(
                flow_id=flow.id,
                body=struct(question="q"),
                options=pb.RunOptions(session_id=session.id),
            )
        ),
        EXHAUSTED,
    )
    assert "holds 4 messages" in (err.details() or "")


def test_oversized_inputs_are_invalid(tight: Tight) -> None:
    c = tight.client
    flow = c.flows.CreateLiveFlow(create_request())
    v = invalid(
        lambda: c.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="x" * 2000)))
    )
    assert "body" in v
    v = invalid(
        lambda: c.sessions.CreateSession(
            ss.CreateSessionRequest(
                live_flow_id=flow.id, inputs=struct(question="q"), variables=struct(big="y" * 2000)
            )
        )
    )
    assert "variables" in v


def test_oversized_requests_are_refused_by_grpc(tight: Tight) -> None:
    c = tight.client
    huge = create_request(description="d" * (100 * 1024))
    rpc_error(lambda: c.flows.CreateLiveFlow(huge), EXHAUSTED)


def test_active_runs_per_organisation_are_limited(tight: Tight) -> None:
    c = tight.client
    slow = c.flows.CreateLiveFlow(
        create_request(
            graph=linear(
                step("start", "START"),
                step("think", "LLM", "slowly", llm=pb.LlmConfig(model="openai/slow")),
                step("end", "END", "${think.result}"),
            )
        )
    )
    before = tight.fake.attempts["slow"]
    background = threading.Thread(target=lambda: c.runs.RunFlow(fr.RunFlowRequest(flow_id=slow.id)))
    background.start()
    wait_until(lambda: tight.fake.attempts["slow"] > before, timeout=30)
    err = rpc_error(lambda: c.runs.RunFlow(fr.RunFlowRequest(flow_id=slow.id)), EXHAUSTED)
    assert "max_active_runs_per_org" in (err.details() or "")
    assert quota_subject(err) == "organisations/acme"
    background.join(timeout=60)
