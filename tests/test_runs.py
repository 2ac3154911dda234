"""Running flows over gRPC: every step type, routing, inputs, pinning, overrides, retries."""

from __future__ import annotations

import concurrent.futures
from datetime import timedelta

import grpc

from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import live_flow_service_pb2 as lf
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss
from tests.conftest import Deployment
from tests.errors import invalid, rpc_error
from tests.graphs import create_request, edge, linear, long_chain, router, step, struct, with_input
from tests.harness import Client, bearer, connect

QUESTION = struct(question="why is the sky blue?")


def make_flow(client: Client, graph=None) -> pb.LiveFlow:  # type: ignore[no-untyped-def]
    return client.flows.CreateLiveFlow(create_request(graph=graph))


def run(client: Client, flow: pb.LiveFlow, body=QUESTION, **options) -> pb.FlowRun:  # type: ignore[no-untyped-def]
    return client.runs.RunFlow(
        fr.RunFlowRequest(flow_id=flow.id, body=body, options=pb.RunOptions(**options))
    )


def test_chain_completes_with_the_echoed_response(client: Client) -> None:
    r = run(client, make_flow(client))
    assert r.status == pb.RUN_STATUS_COMPLETE
    draft = "Answer briefly: why is the sky blue?"
    assert r.response == f"Improve: {draft} | Critique: {draft}"
    assert [s.step.name for s in r.ai_message.steps] == [
        "start",
        "draft",
        "critique",
        "final",
        "end",
    ]
    assert all(s.status == pb.STEP_STATUS_COMPLETED for s in r.ai_message.steps)


def test_run_reports_messages_and_timing(client: Client) -> None:
    r = run(client, make_flow(client))
    assert r.user_message.role == "user" and r.user_message.content == "why is the sky blue?"
    assert r.ai_message.role == "assistant" and r.ai_message.content == r.response
    start, end = r.start_time.ToDatetime(), r.end_time.ToDatetime()
    assert r.created_at.ToDatetime() <= start <= end
    assert r.duration_ms == (end - start) // timedelta(milliseconds=1)
    assert r.session_id and r.version == 1


def test_step_prompts_are_rendered_and_stored(client: Client) -> None:
    r = run(client, make_flow(client))
    draft = r.ai_message.steps[1]
    assert draft.prompt == "Answer briefly: why is the sky blue?"
    assert draft.result == draft.prompt
    assert r.ai_message.steps[0].prompt == "" and r.ai_message.steps[0].result == ""


def test_missing_required_input_is_invalid(client: Client) -> None:
    violations = invalid(lambda: run(client, make_flow(client), body=struct(other="x")))
    assert "body.question" in violations


def test_run_of_unknown_flow_is_not_found(client: Client) -> None:
    rpc_error(
        lambda: client.runs.RunFlow(
            fr.RunFlowRequest(flow_id="00000000-0000-4000-8000-000000000000")
        ),
        grpc.StatusCode.NOT_FOUND,
    )


def test_run_of_flow_without_version_is_failed_precondition(client: Client) -> None:
    flow = client.flows.CreateLiveFlow(lf.CreateLiveFlowRequest(name="no graph"))
    rpc_error(lambda: run(client, flow), grpc.StatusCode.FAILED_PRECONDITION)


def test_condition_follows_the_matching_label(client: Client) -> None:
    flow = make_flow(client, router())
    assert run(client, flow, body=struct(choice="yes")).response == "took yes"
    assert run(client, flow, body=struct(choice=" no ")).response == "took no"


def test_condition_falls_back_to_the_unlabelled_default(client: Client) -> None:
    assert (
        run(client, make_flow(client, router()), body=struct(choice="maybe")).response
        == "took default"
    )


def test_condition_without_match_or_default_fails_the_run(client: Client) -> None:
    steps, transitions = router()
    flow = make_flow(client, (steps[:4], transitions[:3]))
    r = run(client, flow, body=struct(choice="maybe"))
    assert r.status == pb.RUN_STATUS_ERROR
    assert "decide" in r.error and "maybe" in r.error
    assert r.ai_message.steps[-1].status == pb.STEP_STATUS_FAILED


def test_llm_step_with_labels_routes_on_its_answer(client: Client) -> None:
    assert (
        run(client, make_flow(client, router("LLM")), body=struct(choice="no")).response
        == "took no"
    )


def test_missing_value_at_run_time_fails_the_step_naming_it(client: Client) -> None:
    flow = make_flow(
        client,
        linear(
            step("start", "START"),
            step("llm", "LLM", "tone: ${vars.tone}"),
            step("end", "END", "${llm.result}"),
        ),
    )
    r = run(client, flow, body=struct())
    assert r.status == pb.RUN_STATUS_ERROR
    assert "vars.tone" in r.error
    assert r.ai_message.steps[-1].step.name == "llm"


def test_variables_fill_templates(client: Client) -> None:
    flow = make_flow(
        client, linear(step("start", "START"), step("end", "END", "tone: ${vars.tone}"))
    )
    session = client.sessions.CreateSession(
        ss.CreateSessionRequest(live_flow_id=flow.id, variables=struct(tone="dry"), wait=True)
    )
    assert session.status == pb.SESSION_STATUS_COMPLETED
    assert session.artifact["response"] == "tone: dry"


def test_http_step_fails_while_no_host_is_allowed(client: Client) -> None:
    call = step("call", "HTTP", http=pb.HttpConfig(url="http://127.0.0.1:9/"))
    r = run(
        client,
        make_flow(client, linear(step("start", "START"), call, step("end", "END", "x"))),
        body=struct(),
    )
    assert r.status == pb.RUN_STATUS_ERROR and "allow" in r.error


def test_runaway_loop_ends_at_the_step_limit(client: Client) -> None:
    graph = (
        [step("start", "START"), step("spin", "CONDITION", "again"), step("end", "END", "never")],
        [edge("start", "spin"), edge("spin", "spin", "again"), edge("spin", "end")],
    )
    r = run(client, make_flow(client, graph), body=struct())
    assert r.status == pb.RUN_STATUS_ERROR
    assert "step limit" in r.error


def test_input_step_pauses_and_an_answer_resumes(client: Client) -> None:
    flow = make_flow(client, with_input())
    waiting = run(client, flow, body=struct(topic="tides"))
    assert waiting.status == pb.RUN_STATUS_WAITING_FOR_INPUT
    session = client.sessions.GetSession(ss.GetSessionRequest(id=waiting.session_id))
    assert session.status == pb.SESSION_STATUS_WAITING_FOR_INPUT
    assert session.current_step.step.name == "ask"
    assert session.current_step.prompt == "What do you want to know about tides?"
    done = client.sessions.SubmitUserInput(
        ss.SubmitUserInputRequest(session_id=session.id, user_input="why twice a day", wait=True)
    )
    assert done.status == pb.SESSION_STATUS_COMPLETED
    ask = next(s for s in done.steps if s.step.name == "ask")
    assert ask.user_input == "why twice a day" and ask.result == "why twice a day"
    assert done.artifact["response"] == "Answer about tides: why twice a day"
    finished = client.runs.GetFlowRun(fr.GetFlowRunRequest(id=waiting.id))
    assert finished.status == pb.RUN_STATUS_COMPLETE


def test_input_to_a_session_not_waiting_is_failed_precondition(client: Client) -> None:
    r = run(client, make_flow(client))
    rpc_error(
        lambda: client.sessions.SubmitUserInput(
            ss.SubmitUserInputRequest(session_id=r.session_id, user_input="x")
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


def test_input_naming_another_step_is_failed_precondition(client: Client) -> None:
    waiting = run(client, make_flow(client, with_input()), body=struct(topic="t"))
    rpc_error(
        lambda: client.sessions.SubmitUserInput(
            ss.SubmitUserInputRequest(
                session_id=waiting.session_id,
                user_input="x",
                step_id="00000000-0000-4000-8000-000000000000",
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


def test_run_on_a_session_waiting_for_input_is_failed_precondition(client: Client) -> None:
    flow = make_flow(client, with_input())
    waiting = run(client, flow, body=struct(topic="t"))
    rpc_error(
        lambda: run(client, flow, body=struct(topic="t"), session_id=waiting.session_id),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


def test_retried_input_is_recorded_once(client: Client) -> None:
    waiting = run(client, make_flow(client, with_input()), body=struct(topic="t"))
    req = ss.SubmitUserInputRequest(
        session_id=waiting.session_id, user_input="a", request_id="answer-1", wait=True
    )
    first = client.sessions.SubmitUserInput(req)
    again = client.sessions.SubmitUserInput(req)
    assert again.status == pb.SESSION_STATUS_COMPLETED
    assert again.steps_count == first.steps_count == 4


def test_retried_run_returns_the_first_run(client: Client) -> None:
    flow = make_flow(client)
    req = fr.RunFlowRequest(flow_id=flow.id, body=QUESTION, request_id="run-once")
    first = client.runs.RunFlow(req)
    again = client.runs.RunFlow(req)
    assert again.id == first.id and again.status == pb.RUN_STATUS_COMPLETE
    listed = client.runs.ListFlowRuns(fr.ListFlowRunsRequest(flow_id=flow.id))
    assert [r.id for r in listed.flow_runs] == [first.id]


def test_concurrent_retries_start_one_run(client: Client) -> None:
    flow = make_flow(client)
    req = fr.RunFlowRequest(flow_id=flow.id, body=QUESTION, request_id="burst")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = {r.id for r in pool.map(lambda _: client.runs.RunFlow(req), range(8))}
    assert len(ids) == 1
    assert len(client.runs.ListFlowRuns(fr.ListFlowRunsRequest(flow_id=flow.id)).flow_runs) == 1


def test_retried_create_session_returns_the_first_session(client: Client) -> None:
    flow = make_flow(client)
    req = ss.CreateSessionRequest(
        live_flow_id=flow.id, inputs=QUESTION, request_id="sess-1", wait=True
    )
    assert client.sessions.CreateSession(req).id == client.sessions.CreateSession(req).id


def test_version_pinning_runs_the_named_version(client: Client) -> None:
    flow = make_flow(client)
    steps, transitions = linear(step("start", "START"), step("end", "END", "version two"))
    client.flows.CreateFlowVersion(
        lf.CreateFlowVersionRequest(flow_id=flow.id, steps=steps, step_transitions=transitions)
    )
    assert run(client, flow, body=struct()).response == "version two"
    pinned = run(client, flow, version=1)
    assert pinned.version == 1 and pinned.response.startswith("Improve:")


def test_pinning_an_unknown_version_is_not_found(client: Client) -> None:
    rpc_error(lambda: run(client, make_flow(client), version=9), grpc.StatusCode.NOT_FOUND)


def test_override_reaches_the_step(client: Client) -> None:
    r = run(client, make_flow(client), override=struct(**{"critique.model": "builtin/missing"}))
    assert r.status == pb.RUN_STATUS_ERROR
    assert "builtin/missing" in r.error and "critique" in r.error
    assert r.override["critique.model"] == "builtin/missing"


def test_override_applies_to_this_run_only(client: Client) -> None:
    flow = make_flow(client)
    run(client, flow, override=struct(**{"critique.model": "builtin/missing"}))
    assert run(client, flow).status == pb.RUN_STATUS_COMPLETE


def test_override_of_unknown_step_is_invalid(client: Client) -> None:
    v = invalid(
        lambda: run(client, make_flow(client), override=struct(**{"ghost.model": "builtin/echo"}))
    )
    assert "options.override['ghost.model']" in v


def test_override_of_unknown_property_is_invalid(client: Client) -> None:
    v = invalid(lambda: run(client, make_flow(client), override=struct(**{"draft.colour": "red"})))
    assert "options.override['draft.colour']" in v


def test_override_with_wrong_type_is_invalid(client: Client) -> None:
    v = invalid(
        lambda: run(client, make_flow(client), override=struct(**{"draft.temperature": "hot"}))
    )
    assert "options.override['draft.temperature']" in v


def test_continuing_a_session_keeps_its_memory(client: Client) -> None:
    flow = make_flow(client)
    first = run(client, flow)
    second = run(client, flow, body=struct(question="and at sunset?"), session_id=first.session_id)
    assert second.session_id == first.session_id
    session = client.sessions.GetSession(ss.GetSessionRequest(id=first.session_id))
    assert [m.role for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.messages[2].content == "and at sunset?"
    assert session.steps_count == 10
    assert [s.run_id for s in session.steps] == [first.id] * 5 + [second.id] * 5


def test_session_of_another_flow_is_invalid(client: Client) -> None:
    a, b = make_flow(client), make_flow(client)
    r = run(client, a)
    assert "options.session_id" in invalid(lambda: run(client, b, session_id=r.session_id))


def test_concurrent_runs_on_one_session_take_turns(client: Client) -> None:
    flow = make_flow(client)
    first = run(client, flow)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(
            pool.map(
                lambda i: run(
                    client, flow, body=struct(question=f"q{i}"), session_id=first.session_id
                ),
                range(6),
            )
        )
    assert all(r.status == pb.RUN_STATUS_COMPLETE for r in results)
    events = _session_events(client, first.session_id, 7 * 12)
    assert [e.seq for e in events] == list(range(1, 7 * 12 + 1))
    owners = [e.run_id for e in events]
    blocks = [owners[i] for i in range(len(owners)) if i == 0 or owners[i] != owners[i - 1]]
    assert len(blocks) == 7, "runs of one session interleaved"


def _session_events(client: Client, session_id: str, count: int) -> list[pb.RunEvent]:
    stream = client.sessions.WatchSession(ss.WatchSessionRequest(session_id=session_id))
    out: list[pb.RunEvent] = []
    for event in stream:
        if event.type == pb.RUN_EVENT_TYPE_STEP_DELTA:
            continue
        out.append(event)
        if len(out) == count:
            stream.cancel()
            break
    return out


def test_get_session_shows_steps_and_version(client: Client) -> None:
    r = run(client, make_flow(client))
    s = client.sessions.GetSession(ss.GetSessionRequest(id=r.session_id))
    assert s.status == pb.SESSION_STATUS_COMPLETED and s.steps_count == 5
    assert s.flow_version.version == 1 and s.live_flow_id == r.flow_id
    assert s.current_step.step.name == "end"
    assert s.artifact["steps"]["draft"] == "Answer briefly: why is the sky blue?"
    assert s.expiration_seconds == 86400
    assert s.expires_at.seconds - s.created_at.seconds == 86400


def test_create_session_without_wait_answers_once_committed(client: Client) -> None:
    flow = make_flow(client)
    s = client.sessions.CreateSession(
        ss.CreateSessionRequest(live_flow_id=flow.id, inputs=QUESTION, name="quick")
    )
    assert s.name == "quick"
    got = client.sessions.GetSession(ss.GetSessionRequest(id=s.id))
    assert got.id == s.id


def test_session_fields_are_validated(client: Client) -> None:
    flow = make_flow(client)
    v = invalid(
        lambda: client.sessions.CreateSession(
            ss.CreateSessionRequest(
                live_flow_id=flow.id,
                inputs=QUESTION,
                name="n" * 41,
                expiration_seconds=59,
                messages=[pb.Message(role="robot", content="hi")],
            )
        )
    )
    assert {"name", "expiration_seconds", "messages[0].role"} <= set(v)


def test_create_session_needs_required_inputs(client: Client) -> None:
    flow = make_flow(client)
    assert "inputs.question" in invalid(
        lambda: client.sessions.CreateSession(ss.CreateSessionRequest(live_flow_id=flow.id))
    )


def test_list_sessions_filters_by_flow_and_status(client: Client) -> None:
    flow = make_flow(client, with_input())
    waiting = run(client, flow, body=struct(topic="t"))
    done = client.sessions.CreateSession(
        ss.CreateSessionRequest(live_flow_id=flow.id, inputs=struct(topic="u"), wait=True)
    )
    client.sessions.SubmitUserInput(
        ss.SubmitUserInputRequest(session_id=done.id, user_input="x", wait=True)
    )
    listed = client.sessions.ListSessions(ss.ListSessionsRequest(live_flow_id=flow.id))
    assert {s.id for s in listed.sessions} == {waiting.session_id, done.id}
    only_waiting = client.sessions.ListSessions(
        ss.ListSessionsRequest(live_flow_id=flow.id, status=pb.SESSION_STATUS_WAITING_FOR_INPUT)
    )
    assert [s.id for s in only_waiting.sessions] == [waiting.session_id]


def test_list_sessions_pages(client: Client) -> None:
    flow = make_flow(client)
    ids = {run(client, flow).session_id for _ in range(5)}
    page1 = client.sessions.ListSessions(ss.ListSessionsRequest(live_flow_id=flow.id, page_size=2))
    page2 = client.sessions.ListSessions(
        ss.ListSessionsRequest(live_flow_id=flow.id, page_size=2, page_token=page1.next_page_token)
    )
    page3 = client.sessions.ListSessions(
        ss.ListSessionsRequest(live_flow_id=flow.id, page_size=2, page_token=page2.next_page_token)
    )
    seen = [s.id for p in (page1, page2, page3) for s in p.sessions]
    assert set(seen) == ids and len(seen) == 5 and not page3.next_page_token


def test_full_view_lists_recent_sessions(client: Client) -> None:
    flow = make_flow(client)
    r = run(client, flow)
    full = client.flows.GetLiveFlow(lf.GetLiveFlowRequest(id=flow.id, view=pb.LIVE_FLOW_VIEW_FULL))
    assert [s.id for s in full.sessions] == [r.session_id]
    basic = client.flows.GetLiveFlow(lf.GetLiveFlowRequest(id=flow.id))
    assert list(basic.sessions) == []


def test_cancel_a_waiting_run(client: Client) -> None:
    waiting = run(client, make_flow(client, with_input()), body=struct(topic="t"))
    cancelled = client.runs.CancelFlowRun(fr.CancelFlowRunRequest(id=waiting.id))
    assert cancelled.status == pb.RUN_STATUS_CANCELLED
    assert cancelled.ai_message.steps[-1].status == pb.STEP_STATUS_CANCELLED
    events = list(client.runs.WatchRun(fr.WatchRunRequest(run_id=waiting.id, after_seq=0)))
    assert events[-1].type == pb.RUN_EVENT_TYPE_RUN_CANCELLED
    assert events[-1].run.status == pb.RUN_STATUS_CANCELLED
    asked = next(e for e in events if e.type == pb.RUN_EVENT_TYPE_INPUT_REQUIRED)
    after = list(client.runs.WatchRun(fr.WatchRunRequest(run_id=waiting.id, after_seq=asked.seq)))
    assert [e.type for e in after] == [pb.RUN_EVENT_TYPE_RUN_CANCELLED]
    session = client.sessions.GetSession(ss.GetSessionRequest(id=waiting.session_id))
    assert session.status == pb.SESSION_STATUS_CANCELLED


def test_cancel_a_finished_run_is_failed_precondition(client: Client) -> None:
    r = run(client, make_flow(client))
    rpc_error(
        lambda: client.runs.CancelFlowRun(fr.CancelFlowRunRequest(id=r.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


def test_cancel_session_stops_its_waiting_run(client: Client) -> None:
    waiting = run(client, make_flow(client, with_input()), body=struct(topic="t"))
    s = client.sessions.CancelSession(ss.CancelSessionRequest(id=waiting.session_id))
    assert s.status == pb.SESSION_STATUS_CANCELLED
    assert (
        client.runs.GetFlowRun(fr.GetFlowRunRequest(id=waiting.id)).status
        == pb.RUN_STATUS_CANCELLED
    )
    rpc_error(
        lambda: client.sessions.SubmitUserInput(
            ss.SubmitUserInputRequest(session_id=s.id, user_input="x")
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


def test_delete_session(client: Client) -> None:
    r = run(client, make_flow(client))
    client.sessions.DeleteSession(ss.DeleteSessionRequest(id=r.session_id))
    rpc_error(
        lambda: client.sessions.GetSession(ss.GetSessionRequest(id=r.session_id)),
        grpc.StatusCode.NOT_FOUND,
    )
    rpc_error(
        lambda: client.runs.GetFlowRun(fr.GetFlowRunRequest(id=r.id)), grpc.StatusCode.NOT_FOUND
    )


def test_list_runs_by_session(client: Client) -> None:
    flow = make_flow(client)
    first = run(client, flow)
    second = run(client, flow, session_id=first.session_id)
    listed = client.runs.ListFlowRuns(fr.ListFlowRunsRequest(session_id=first.session_id))
    assert [r.id for r in listed.flow_runs] == [second.id, first.id]


def test_long_flow_runs_every_step_once(client: Client) -> None:
    r = run(client, make_flow(client, long_chain(40)), body=struct())
    assert r.status == pb.RUN_STATUS_COMPLETE
    assert len(r.ai_message.steps) == 42
    assert r.response == "go" + "." * 39


def test_other_organisation_cannot_touch_runs_or_sessions(
    client: Client, other_org: Client
) -> None:
    waiting = run(client, make_flow(client, with_input()), body=struct(topic="t"))
    nf = grpc.StatusCode.NOT_FOUND
    rpc_error(lambda: other_org.runs.GetFlowRun(fr.GetFlowRunRequest(id=waiting.id)), nf)
    rpc_error(lambda: other_org.runs.CancelFlowRun(fr.CancelFlowRunRequest(id=waiting.id)), nf)
    rpc_error(lambda: list(other_org.runs.WatchRun(fr.WatchRunRequest(run_id=waiting.id))), nf)
    rpc_error(
        lambda: other_org.sessions.GetSession(ss.GetSessionRequest(id=waiting.session_id)), nf
    )
    rpc_error(
        lambda: other_org.sessions.SubmitUserInput(
            ss.SubmitUserInputRequest(session_id=waiting.session_id, user_input="x")
        ),
        nf,
    )
    rpc_error(
        lambda: other_org.sessions.CancelSession(ss.CancelSessionRequest(id=waiting.session_id)), nf
    )
    rpc_error(
        lambda: other_org.sessions.DeleteSession(ss.DeleteSessionRequest(id=waiting.session_id)), nf
    )
    rpc_error(
        lambda: list(
            other_org.sessions.WatchSession(ss.WatchSessionRequest(session_id=waiting.session_id))
        ),
        nf,
    )
    rpc_error(lambda: other_org.runs.RunFlow(fr.RunFlowRequest(flow_id=waiting.flow_id)), nf)
    assert waiting.id not in {
        r.id for r in other_org.runs.ListFlowRuns(fr.ListFlowRunsRequest()).flow_runs
    }
    assert (
        client.runs.GetFlowRun(fr.GetFlowRunRequest(id=waiting.id)).status
        == pb.RUN_STATUS_WAITING_FOR_INPUT
    )


def test_deleting_a_flow_deletes_its_sessions_and_runs(client: Client) -> None:
    flow = make_flow(client)
    r = run(client, flow)
    client.flows.DeleteLiveFlow(lf.DeleteLiveFlowRequest(id=flow.id))
    rpc_error(
        lambda: client.sessions.GetSession(ss.GetSessionRequest(id=r.session_id)),
        grpc.StatusCode.NOT_FOUND,
    )
    rpc_error(
        lambda: client.runs.GetFlowRun(fr.GetFlowRunRequest(id=r.id)), grpc.StatusCode.NOT_FOUND
    )
    assert list(client.runs.ListFlowRuns(fr.ListFlowRunsRequest(flow_id=flow.id)).flow_runs) == []


def test_ids_a_call_tells_are_found_at_once_from_another_connection(
    deployment: Deployment,
) -> None:
    """Read your writes: once a call has told a run's or session's id, any connection finds it."""
    told = connect(deployment.address, bearer(deployment.acme_key))
    other = connect(deployment.address, bearer(deployment.acme_key))
    try:
        flow = told.flows.CreateLiveFlow(create_request())
        for _ in range(5):
            stream = told.runs.StreamRunFlow(
                fr.StreamRunFlowRequest(flow_id=flow.id, body=QUESTION)
            )
            first = next(iter(stream))
            assert other.runs.GetFlowRun(fr.GetFlowRunRequest(id=first.run_id)).id == first.run_id
            assert other.sessions.GetSession(ss.GetSessionRequest(id=first.session_id)).id
            stream.cancel()
            created = told.sessions.CreateSession(
                ss.CreateSessionRequest(live_flow_id=flow.id, inputs=QUESTION)
            )
            assert other.sessions.GetSession(ss.GetSessionRequest(id=created.id)).id == created.id
            queued = told.runs.RunFlow(
                fr.RunFlowRequest(
                    flow_id=flow.id, body=QUESTION, options=pb.RunOptions(session_id=created.id)
                )
            )
            assert other.runs.GetFlowRun(fr.GetFlowRunRequest(id=queued.id)).id == queued.id
    finally:
        told.close()
        other.close()
