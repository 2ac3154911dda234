"""Every RPC of the contract, called with another organisation's key on this one's resources:
a foreign id is NOT_FOUND (or a field violation where it is only referenced), and lists never
show it. The walk fails if an RPC is added without a case here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from flowsvc.config import Settings
from flowsvc.v1 import eval_service_pb2 as ev
from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import live_flow_service_pb2 as lf
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import schedule_service_pb2 as sc
from flowsvc.v1 import schedule_service_pb2_grpc as sc_grpc
from flowsvc.v1 import session_service_pb2 as ss
from flowsvc.v1 import webhook_service_pb2 as wh
from flowsvc.v1 import webhook_service_pb2_grpc as wh_grpc
from tests.conftest import Deployment, database_for
from tests.graphs import create_request, linear, step, struct, with_input
from tests.harness import Client, InProcessServer, bearer, mint_key
from tests.rpc_catalog import all_rpcs, invoke

HOOK_HOST = "127.0.0.1:9"  # allowed for webhooks here; nothing listens (deliveries just fail)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[Deployment]:
    with database_for(tmp_path_factory, backend) as url:
        server = InProcessServer(
            Settings(listen="127.0.0.1:0", database_url=url, http_allow_hosts=(HOOK_HOST,))
        )
        try:
            yield Deployment(server, url, mint_key(url, "acme"), mint_key(url, "globex"))
        finally:
            server.stop()

NF = grpc.StatusCode.NOT_FOUND
BAD = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def owned(client: Client) -> dict[str, Any]:
    """acme's resources: a flow with a session waiting for input, and an evaluated run."""
    flow = client.flows.CreateLiveFlow(create_request(graph=with_input()))
    waiting = client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(topic="t")))
    judge = client.flows.CreateLiveFlow(
        create_request(graph=linear(step("start", "START"), step("end", "END", "score: 1")))
    )
    plain = client.flows.CreateLiveFlow(create_request())
    judged = client.runs.RunFlow(
        fr.RunFlowRequest(
            flow_id=plain.id,
            body=struct(question="q"),
            options=pb.RunOptions(
                eval_options=pb.EvalOptions(
                    run_mode=pb.EVAL_RUN_MODE_BLOCK, runs=[pb.EvalRun(flow_eval_id=judge.id)]
                )
            ),
        )
    )
    hook = wh_grpc.WebhookServiceStub(client.channel).CreateWebhook(
        wh.CreateWebhookRequest(
            webhook=pb.Webhook(url=f"http://{HOOK_HOST}/x", event_types=["run.completed"])
        )
    )
    schedule = sc_grpc.ScheduleServiceStub(client.channel).CreateSchedule(
        sc.CreateScheduleRequest(
            schedule=pb.Schedule(flow_id=plain.id, cron="0 0 1 1 *", body=struct(question="q"))
        )
    )
    return {
        "hook": hook.id,
        "schedule": schedule.id,
        "flow": flow,
        "session": waiting.session_id,
        # A completed step (START) of that session.
        "step": client.sessions.GetSession(ss.GetSessionRequest(id=waiting.session_id))
        .steps[0]
        .id,
        "run": waiting.id,
        "judge": judge,
        "job": judged.eval_job_id,
        "version": flow.current_version.id,
    }


def cases(o: dict[str, Any], theirs: pb.LiveFlow) -> dict[str, list[tuple[Any, grpc.StatusCode]]]:
    flow, version = o["flow"], o["flow"].current_version
    foreign_eval = pb.RunOptions(
        eval_options=pb.EvalOptions(runs=[pb.EvalRun(flow_eval_id=o["judge"].id)])
    )
    return {
        "CreateLiveFlow": [(create_request(auto_eval_flow_ids=[flow.id]), BAD)],
        "GetLiveFlow": [(lf.GetLiveFlowRequest(id=flow.id, view=pb.LIVE_FLOW_VIEW_FULL), NF)],
        "ListLiveFlows": [],
        "UpdateLiveFlow": [
            (
                lf.UpdateLiveFlowRequest(
                    live_flow=pb.LiveFlow(id=flow.id, name="x"),
                    update_mask=field_mask_pb2.FieldMask(paths=["name"]),
                ),
                NF,
            ),
            (
                lf.UpdateLiveFlowRequest(
                    live_flow=pb.LiveFlow(id=theirs.id, auto_eval_flow_ids=[flow.id]),
                    update_mask=field_mask_pb2.FieldMask(paths=["auto_eval_flow_ids"]),
                ),
                BAD,
            ),
        ],
        "DeleteLiveFlow": [(lf.DeleteLiveFlowRequest(id=flow.id), NF)],
        "CreateFlowVersion": [
            (
                lf.CreateFlowVersionRequest(
                    flow_id=flow.id, steps=version.steps, step_transitions=version.step_transitions
                ),
                NF,
            )
        ],
        "GetFlowVersion": [(lf.GetFlowVersionRequest(id=o["version"]), NF)],
        "ListFlowVersions": [(lf.ListFlowVersionsRequest(flow_id=flow.id), NF)],
        "CreateSession": [
            (ss.CreateSessionRequest(live_flow_id=flow.id, inputs=struct(topic="t")), NF)
        ],
        "GetSession": [(ss.GetSessionRequest(id=o["session"]), NF)],
        "ListSessions": [(ss.ListSessionsRequest(live_flow_id=flow.id), grpc.StatusCode.OK)],
        "SubmitUserInput": [
            (ss.SubmitUserInputRequest(session_id=o["session"], user_input="x"), NF)
        ],
        "CancelSession": [(ss.CancelSessionRequest(id=o["session"]), NF)],
        "DeleteSession": [(ss.DeleteSessionRequest(id=o["session"]), NF)],
        "WatchSession": [(ss.WatchSessionRequest(session_id=o["session"]), NF)],
        "WatchSessionBatches": [(ss.WatchSessionBatchesRequest(session_id=o["session"]), NF)],
        "ForkSession": [(ss.ForkSessionRequest(session_id=o["session"], step_id=o["step"]), NF)],
        "RunFlow": [
            (fr.RunFlowRequest(flow_id=flow.id, body=struct(topic="t")), NF),
            (
                fr.RunFlowRequest(
                    flow_id=theirs.id,
                    body=struct(question="q"),
                    options=pb.RunOptions(session_id=o["session"]),
                ),
                NF,
            ),
            (
                fr.RunFlowRequest(
                    flow_id=theirs.id, body=struct(question="q"), options=foreign_eval
                ),
                BAD,
            ),
        ],
        "StreamRunFlow": [(fr.StreamRunFlowRequest(flow_id=flow.id, body=struct(topic="t")), NF)],
        "WatchRun": [(fr.WatchRunRequest(run_id=o["run"]), NF)],
        "GetFlowRun": [(fr.GetFlowRunRequest(id=o["run"]), NF)],
        "ListFlowRuns": [(fr.ListFlowRunsRequest(flow_id=flow.id), grpc.StatusCode.OK)],
        "CancelFlowRun": [(fr.CancelFlowRunRequest(id=o["run"]), NF)],
        "GetEvalJob": [(ev.GetEvalJobRequest(id=o["job"]), NF)],
        "ListEvalJobs": [(ev.ListEvalJobsRequest(run_id=o["run"]), grpc.StatusCode.OK)],
        "CreateWebhook": [
            (
                wh.CreateWebhookRequest(
                    webhook=pb.Webhook(
                        url=f"http://{HOOK_HOST}/x", event_types=["run.started"], flow_id=flow.id
                    )
                ),
                NF,
            )
        ],
        "GetWebhook": [(wh.GetWebhookRequest(id=o["hook"]), NF)],
        "ListWebhooks": [(wh.ListWebhooksRequest(), grpc.StatusCode.OK)],
        "DeleteWebhook": [(wh.DeleteWebhookRequest(id=o["hook"]), NF)],
        "ListWebhookDeliveries": [(wh.ListWebhookDeliveriesRequest(webhook_id=o["hook"]), NF)],
        "CreateSchedule": [
            (
                sc.CreateScheduleRequest(
                    schedule=pb.Schedule(
                        flow_id=flow.id, interval_seconds=60, body=struct(topic="t")
                    )
                ),
                NF,
            )
        ],
        "GetSchedule": [(sc.GetScheduleRequest(id=o["schedule"]), NF)],
        "ListSchedules": [(sc.ListSchedulesRequest(flow_id=flow.id), grpc.StatusCode.OK)],
        "UpdateSchedule": [
            (
                sc.UpdateScheduleRequest(
                    schedule=pb.Schedule(id=o["schedule"], interval_seconds=5),
                    update_mask=field_mask_pb2.FieldMask(paths=["interval_seconds"]),
                ),
                NF,
            )
        ],
        "DeleteSchedule": [(sc.DeleteScheduleRequest(id=o["schedule"]), NF)],
        "PauseSchedule": [(sc.PauseScheduleRequest(id=o["schedule"]), NF)],
        "ResumeSchedule": [(sc.ResumeScheduleRequest(id=o["schedule"]), NF)],
        "TriggerSchedule": [(sc.TriggerScheduleRequest(id=o["schedule"]), NF)],
    }


def test_every_rpc_keeps_other_organisations_out(
    deployment: Deployment, client: Client, other_org: Client, owned: dict[str, Any]
) -> None:
    theirs = other_org.flows.CreateLiveFlow(create_request())
    table = cases(owned, theirs)
    rpcs = all_rpcs()
    assert {r.name for r in rpcs} == set(table), "a new RPC needs a cross-tenant case here"
    channel = grpc.insecure_channel(deployment.address)
    try:
        for rpc in rpcs:
            for request, expected in table[rpc.name]:
                got = invoke(channel, rpc, request, bearer(deployment.globex_key))
                assert got == expected, f"{rpc.name}({request}) answered {got}, not {expected}"
    finally:
        channel.close()
    # The lists globex may call show none of acme's resources.
    listed: list[Callable[[], Any]] = [
        lambda: other_org.flows.ListLiveFlows(lf.ListLiveFlowsRequest(page_size=100)).live_flows,
        lambda: other_org.sessions.ListSessions(ss.ListSessionsRequest(page_size=100)).sessions,
        lambda: other_org.runs.ListFlowRuns(fr.ListFlowRunsRequest(page_size=100)).flow_runs,
        lambda: other_org.evals.ListEvalJobs(ev.ListEvalJobsRequest(page_size=100)).eval_jobs,
        lambda: wh_grpc.WebhookServiceStub(other_org.channel)
        .ListWebhooks(wh.ListWebhooksRequest(page_size=100))
        .webhooks,
        lambda: sc_grpc.ScheduleServiceStub(other_org.channel)
        .ListSchedules(sc.ListSchedulesRequest(page_size=100))
        .schedules,
    ]
    for items in listed:
        assert all(getattr(x, "organisation_id", "globex") in ("", "globex") for x in items())
        assert owned["flow"].id not in {getattr(x, "id", "") for x in items()}
        assert not {owned["hook"], owned["schedule"]} & {getattr(x, "id", "") for x in items()}
    # And acme's resources are all still there, untouched.
    assert client.flows.GetLiveFlow(lf.GetLiveFlowRequest(id=owned["flow"].id)).name == "flow"
    assert (
        client.sessions.GetSession(ss.GetSessionRequest(id=owned["session"])).status
        == pb.SESSION_STATUS_WAITING_FOR_INPUT
    )
