"""Webhooks against the real server: signed Standard Webhooks deliveries to a loopback
receiver, retried with the same webhook-id, ordered per session, never slowing runs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from flowsvc.config import Settings
from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss
from flowsvc.v1 import webhook_service_pb2 as wh
from flowsvc.v1 import webhook_service_pb2_grpc as wh_grpc
from tests.conftest import database_for
from tests.graphs import create_request, struct, with_input
from tests.harness import (
    ChildServer,
    Client,
    InProcessServer,
    bearer,
    connect,
    mint_key,
    sqlite_url,
    wait_until,
)
from tests.webhook_receiver import Receiver, verify

Acme = tuple[Client, wh_grpc.WebhookServiceStub]


@pytest.fixture(scope="module")
def receiver(backend: str) -> Iterator[Receiver]:
    r = Receiver()  # one per backend: paths are reused
    yield r
    r.close()


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, backend: str, receiver: Receiver
) -> Iterator[tuple[InProcessServer, str]]:
    with database_for(tmp_path_factory, backend) as url:
        server = InProcessServer(
            Settings(
                listen="127.0.0.1:0",
                database_url=url,
                http_allow_hosts=(receiver.host,),
                webhook_timeout=1.0,
                webhook_retry_base_seconds=0.2,
                webhook_retry_window_seconds=3.0,
                webhook_poll_seconds=0.1,
            )
        )
        try:
            yield server, url
        finally:
            server.stop()


@pytest.fixture(scope="module")
def acme(served: tuple[InProcessServer, str]) -> Iterator[Acme]:
    server, url = served
    c = connect(server.address, bearer(mint_key(url, "acme")))
    yield c, wh_grpc.WebhookServiceStub(c.channel)
    c.close()


def _hook(stub: wh_grpc.WebhookServiceStub, url: str, *types: str, flow_id: str = "") -> pb.Webhook:
    return stub.CreateWebhook(
        wh.CreateWebhookRequest(webhook=pb.Webhook(url=url, event_types=types, flow_id=flow_id))
    )


def test_deliveries_are_signed_and_carry_the_run(acme: Acme, receiver: Receiver) -> None:
    client, hooks = acme
    flow = client.flows.CreateLiveFlow(create_request())
    hook = _hook(hooks, receiver.url("/signed"), "run.started", "run.completed", flow_id=flow.id)
    assert hook.secret.startswith("whsec_")
    assert hooks.GetWebhook(wh.GetWebhookRequest(id=hook.id)).secret == ""
    run = client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="q")))
    wait_until(lambda: len(receiver.at("/signed")) >= 2, 15)
    got = receiver.at("/signed")
    assert all(verify(hook.secret, r) for r in got)
    assert not verify("whsec_" + "A" * 44, got[0])
    bodies = [r.json for r in got]
    assert [b["type"] for b in bodies] == ["run.started", "run.completed"]
    assert bodies[1]["data"]["id"] == run.id
    assert bodies[1]["data"]["status"] == "RUN_STATUS_COMPLETE"
    assert bodies[1]["data"]["response"] == run.response
    assert bodies[0]["timestamp"].endswith("Z")
    assert len({r.id for r in got}) == 2
    wait_until(
        lambda: all(
            d.status == pb.WEBHOOK_DELIVERY_STATUS_DELIVERED
            for d in hooks.ListWebhookDeliveries(
                wh.ListWebhookDeliveriesRequest(webhook_id=hook.id)
            ).webhook_deliveries
        ),
        5,
    )
    listed = hooks.ListWebhookDeliveries(wh.ListWebhookDeliveriesRequest(webhook_id=hook.id))
    assert {d.id for d in listed.webhook_deliveries} == {r.id for r in got}
    # Another flow's runs are not this webhook's business.
    other = client.flows.CreateLiveFlow(create_request())
    client.runs.RunFlow(fr.RunFlowRequest(flow_id=other.id, body=struct(question="q")))
    time.sleep(0.5)
    assert len(receiver.at("/signed")) == 2


def test_a_failed_delivery_is_retried_with_the_same_id(acme: Acme, receiver: Receiver) -> None:
    client, hooks = acme
    receiver.plan["/flaky"] = [500, 200]
    flow = client.flows.CreateLiveFlow(create_request())
    hook = _hook(hooks, receiver.url("/flaky"), "run.completed", flow_id=flow.id)
    client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="q")))
    wait_until(lambda: len(receiver.at("/flaky")) >= 2, 15)
    first, second = receiver.at("/flaky")[:2]
    assert first.id == second.id and first.body == second.body
    assert verify(hook.secret, first) and verify(hook.secret, second)
    deliveries = hooks.ListWebhookDeliveries(
        wh.ListWebhookDeliveriesRequest(webhook_id=hook.id)
    ).webhook_deliveries
    wait_until(
        lambda: hooks.ListWebhookDeliveries(
            wh.ListWebhookDeliveriesRequest(webhook_id=hook.id)
        ).webhook_deliveries[0].status == pb.WEBHOOK_DELIVERY_STATUS_DELIVERED,
        5,
    )
    d = hooks.ListWebhookDeliveries(
        wh.ListWebhookDeliveriesRequest(webhook_id=hook.id)
    ).webhook_deliveries[0]
    assert len(deliveries) == 1 and d.attempts == 2 and d.last_status_code == 200


def test_a_dead_receiver_is_given_up_after_the_window(acme: Acme, receiver: Receiver) -> None:
    client, hooks = acme
    receiver.plan["/dead"] = [503]
    flow = client.flows.CreateLiveFlow(create_request())
    hook = _hook(hooks, receiver.url("/dead"), "run.completed", flow_id=flow.id)
    client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="q")))

    def failed() -> bool:
        ds = hooks.ListWebhookDeliveries(
            wh.ListWebhookDeliveriesRequest(webhook_id=hook.id)
        ).webhook_deliveries
        return bool(ds) and ds[0].status == pb.WEBHOOK_DELIVERY_STATUS_FAILED

    wait_until(failed, 15)
    d = hooks.ListWebhookDeliveries(
        wh.ListWebhookDeliveriesRequest(webhook_id=hook.id)
    ).webhook_deliveries[0]
    assert d.last_status_code == 503 and "503" in d.last_error
    assert d.attempts == len(receiver.at("/dead")) >= 3  # 0.2 s, 0.6 s, 1.8 s apart
    assert len({r.id for r in receiver.at("/dead")}) == 1


def test_a_hanging_receiver_slows_neither_runs_nor_other_receivers(
    acme: Acme, receiver: Receiver
) -> None:
    client, hooks = acme
    receiver.plan["/hang"] = ["hang"]
    flow = client.flows.CreateLiveFlow(create_request())
    _hook(hooks, receiver.url("/hang"), "run.started", "run.completed", flow_id=flow.id)
    _hook(hooks, receiver.url("/fine"), "run.completed", flow_id=flow.id)
    started = time.monotonic()
    for _ in range(10):
        client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="q")))
    assert time.monotonic() - started < 5
    wait_until(lambda: len(receiver.at("/fine")) >= 10, 10)
    assert len({r.json["data"]["id"] for r in receiver.at("/fine")}) == 10


def test_waiting_for_input_and_session_order(acme: Acme, receiver: Receiver) -> None:
    client, hooks = acme
    flow = client.flows.CreateLiveFlow(create_request(graph=with_input()))
    types = ("run.started", "session.waiting_for_input", "run.completed")
    hook = _hook(hooks, receiver.url("/order"), *types, flow_id=flow.id)
    waiting = client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(topic="t")))
    client.sessions.SubmitUserInput(
        ss.SubmitUserInputRequest(session_id=waiting.session_id, user_input="a", wait=True)
    )
    wait_until(lambda: len(receiver.at("/order")) >= 3, 15)
    got = receiver.at("/order")
    assert [r.json["type"] for r in got] == list(types)
    assert got[1].json["data"]["id"] == waiting.session_id
    assert all(verify(hook.secret, r) for r in got)


def test_bad_webhooks_are_refused_precisely(acme: Acme) -> None:
    _, hooks = acme
    with pytest.raises(grpc.RpcError) as err:
        _hook(hooks, "http://elsewhere.example:80/x", "run.completed", "run.exploded")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "allow-list" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        hooks.GetWebhook(wh.GetWebhookRequest(id="0190a0a0-0000-7000-8000-000000000000"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_delivery_committed_before_sigkill_is_sent_after_restart(tmp_path: Path) -> None:
    receiver = Receiver()
    receiver.plan["/k"] = ["hang"]  # committed, claimed, in flight: then the server dies
    url = sqlite_url(tmp_path / "db.sqlite")
    key = mint_key(url, "acme")
    env = {"FLOWSVC_HTTP_ALLOW_HOSTS": receiver.host, "FLOWSVC_WEBHOOK_TIMEOUT": "30"}
    first = ChildServer(url, tmp_path / "first.log", extra_env=env)
    c = connect(first.address, bearer(key))
    flow = c.flows.CreateLiveFlow(create_request())
    hook = _hook(wh_grpc.WebhookServiceStub(c.channel), receiver.url("/k"), "run.completed")
    run = c.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(question="q")))
    wait_until(lambda: len(receiver.at("/k")) == 1, 10)
    first.signal(signal.SIGKILL)
    first.wait()
    c.close()
    receiver.plan["/k"] = [200]
    second = ChildServer(url, tmp_path / "second.log", extra_env=env)
    try:
        wait_until(lambda: len(receiver.at("/k")) >= 2, 20)
        first_try, second_try = receiver.at("/k")[:2]
        assert first_try.id == second_try.id and verify(hook.secret, second_try)
        assert second_try.json["data"]["id"] == run.id
    finally:
        second.signal(signal.SIGTERM)
        second.wait()
        receiver.close()


def test_run_callback_is_signed_with_the_organisation_secret(
    served: tuple[InProcessServer, str], acme: Acme, receiver: Receiver
) -> None:
    client, _ = acme
    flow = client.flows.CreateLiveFlow(create_request())
    request = fr.RunFlowRequest(
        flow_id=flow.id,
        body=struct(question="q"),
        options=pb.RunOptions(webhook_url=receiver.url("/callback")),
    )
    with pytest.raises(grpc.RpcError) as err:  # no organisation secret yet
        client.runs.RunFlow(request)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    def secret(*flags: str) -> str:
        cli = [sys.executable, "-m", "flowsvc", "webhook-secret", "--org", "acme", *flags]
        out = subprocess.run(
            [*cli, "--database-url", served[1]], capture_output=True, text=True, check=True
        )
        return out.stdout.strip().splitlines()[-1]

    first = secret()
    assert secret() == first and first.startswith("whsec_")
    run = client.runs.RunFlow(request)
    assert run.webhook_url == receiver.url("/callback")
    wait_until(lambda: len(receiver.at("/callback")) == 1, 10)
    got = receiver.at("/callback")[0]
    assert got.json["type"] == "run.completed" and got.json["data"]["id"] == run.id
    assert verify(first, got)
    rotated = secret("--rotate")
    assert rotated != first
    client.runs.RunFlow(request)
    wait_until(lambda: len(receiver.at("/callback")) == 2, 10)
    assert verify(rotated, receiver.at("/callback")[1])
    bad = fr.RunFlowRequest(
        flow_id=flow.id,
        body=struct(question="q"),
        options=pb.RunOptions(webhook_url="http://not-allowed.example/x"),
    )
    with pytest.raises(grpc.RpcError) as err:
        client.runs.RunFlow(bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "options.webhook_url" in err.value.details()
