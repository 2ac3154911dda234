"""request_id: the same id with the same request answers with the original result; the same id
with a different request is ALREADY_EXISTS, with an ErrorInfo naming the id. For every RPC
that takes one."""

from __future__ import annotations

from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import live_flow_service_pb2 as lf
from flowsvc.v1 import session_service_pb2 as ss
from tests.errors import reused_request_id
from tests.graphs import create_request, struct, with_input
from tests.harness import Client

QUESTION = struct(question="q")


def test_create_live_flow_same_id_same_request_returns_the_first_flow(client: Client) -> None:
    first = client.flows.CreateLiveFlow(create_request("same", request_id="lf-same"))
    again = client.flows.CreateLiveFlow(create_request("same", request_id="lf-same"))
    assert again.id == first.id
    assert again.current_version.id == first.current_version.id


def test_create_live_flow_same_id_different_request_is_already_exists(client: Client) -> None:
    first = client.flows.CreateLiveFlow(create_request("first", request_id="lf-reused"))
    assert (
        reused_request_id(
            lambda: client.flows.CreateLiveFlow(create_request("second", request_id="lf-reused"))
        )
        == "lf-reused"
    )
    # A different graph under the same name is a different request too.
    assert (
        reused_request_id(
            lambda: client.flows.CreateLiveFlow(
                create_request("first", graph=with_input(), request_id="lf-reused")
            )
        )
        == "lf-reused"
    )
    listed = client.flows.ListLiveFlows(lf.ListLiveFlowsRequest(page_size=100))
    assert [f.id for f in listed.live_flows if f.name in ("first", "second")] == [first.id]


def test_run_flow_same_id_different_body_is_already_exists(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    first = client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=QUESTION, request_id="r"))
    again = client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=QUESTION, request_id="r"))
    assert again.id == first.id
    assert (
        reused_request_id(
            lambda: client.runs.RunFlow(
                fr.RunFlowRequest(flow_id=flow.id, body=struct(question="other"), request_id="r")
            )
        )
        == "r"
    )
    stream = client.runs.StreamRunFlow(
        fr.StreamRunFlowRequest(flow_id=flow.id, body=struct(question="other"), request_id="r")
    )
    assert reused_request_id(lambda: list(stream)) == "r"


def test_create_session_same_id_different_inputs_is_already_exists(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(create_request())
    req = ss.CreateSessionRequest(live_flow_id=flow.id, inputs=QUESTION, request_id="s", wait=True)
    first = client.sessions.CreateSession(req)
    assert client.sessions.CreateSession(req).id == first.id
    other = ss.CreateSessionRequest(
        live_flow_id=flow.id, inputs=struct(question="other"), request_id="s"
    )
    assert reused_request_id(lambda: client.sessions.CreateSession(other)) == "s"


def _waiting_session(client: Client) -> str:
    flow = client.flows.CreateLiveFlow(create_request(graph=with_input()))
    waiting = client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=struct(topic="t")))
    return waiting.session_id


def test_submit_user_input_same_id_same_input_returns_the_original_answer(
    client: Client,
) -> None:
    session_id = _waiting_session(client)
    req = ss.SubmitUserInputRequest(
        session_id=session_id, user_input="a", request_id="in-same", wait=True
    )
    first = client.sessions.SubmitUserInput(req)
    again = client.sessions.SubmitUserInput(req)
    assert again.steps_count == first.steps_count
    assert [s.user_input for s in again.steps if s.user_input] == ["a"]


def test_submit_user_input_same_id_different_input_is_already_exists(client: Client) -> None:
    session_id = _waiting_session(client)
    client.sessions.SubmitUserInput(
        ss.SubmitUserInputRequest(
            session_id=session_id, user_input="a", request_id="in-reused", wait=True
        )
    )
    assert (
        reused_request_id(
            lambda: client.sessions.SubmitUserInput(
                ss.SubmitUserInputRequest(
                    session_id=session_id, user_input="b", request_id="in-reused"
                )
            )
        )
        == "in-reused"
    )
    # Naming the step that was answered, with the same input, is the same request.
    answered = client.sessions.GetSession(ss.GetSessionRequest(id=session_id))
    step_id = next(s.id for s in answered.steps if s.user_input == "a")
    same = client.sessions.SubmitUserInput(
        ss.SubmitUserInputRequest(
            session_id=session_id, user_input="a", step_id=step_id, request_id="in-reused"
        )
    )
    assert [s.user_input for s in same.steps if s.user_input] == ["a"]


def test_submit_user_input_same_id_other_step_is_already_exists(client: Client) -> None:
    session_id = _waiting_session(client)
    client.sessions.SubmitUserInput(
        ss.SubmitUserInputRequest(
            session_id=session_id, user_input="a", request_id="in-step", wait=True
        )
    )
    assert (
        reused_request_id(
            lambda: client.sessions.SubmitUserInput(
                ss.SubmitUserInputRequest(
                    session_id=session_id,
                    user_input="a",
                    step_id="00000000-0000-4000-8000-000000000000",
                    request_id="in-step",
                )
            )
        )
        == "in-step"
    )
