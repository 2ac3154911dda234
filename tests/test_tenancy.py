"""Every RPC of the contract, called with another organisation's key on this one's resources:
a foreign id is NOT_FOUND (or a field violation where it is only referenced), and lists never
show it. The walk fails if an RPC is added without a case here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from flowsvc.v1 import eval_service_pb2 as ev
from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import live_flow_service_pb2 as lf
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss
from tests.conftest import Deployment
from tests.graphs import create_request, linear, step, struct, with_input
from tests.harness import Client, bearer
from tests.rpc_catalog import all_rpcs, invoke

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
    return {
        "flow": flow,
        "session": waiting.session_id,
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
    ]
    for items in listed:
        assert all(getattr(x, "organisation_id", "globex") in ("", "globex") for x in items())
        assert owned["flow"].id not in {getattr(x, "id", "") for x in items()}
    # And acme's resources are all still there, untouched.
    assert client.flows.GetLiveFlow(lf.GetLiveFlowRequest(id=owned["flow"].id)).name == "flow"
    assert (
        client.sessions.GetSession(ss.GetSessionRequest(id=owned["session"])).status
        == pb.SESSION_STATUS_WAITING_FOR_INPUT
    )
