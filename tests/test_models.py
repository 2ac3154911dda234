"""LLM steps against a loopback OpenAI-compatible server through the real openai SDK, and
HTTP tool steps against loopback targets."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowsvc.config import Settings
from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss
from tests.fake_openai import FakeOpenAI
from tests.graphs import create_request, linear, step, struct
from tests.harness import Client, InProcessServer, bearer, connect, mint_key, sqlite_url

API_KEY = "sk-test-secret-key-123"
PRICE_IN, PRICE_OUT = 1.5, 2.0  # USD per million tokens


@dataclass
class Models:
    client: Client
    fake: FakeOpenAI


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Models]:
    fake = FakeOpenAI()
    url = sqlite_url(tmp_path_factory.mktemp("models") / "db.sqlite")
    settings = Settings(
        listen="127.0.0.1:0",
        database_url=url,
        openai_base_url=f"{fake.url}/v1",
        openai_api_key=API_KEY,
        model_max_retries=2,
        step_timeout=2.0,
        model_prices={"openai/stream": {"input": PRICE_IN, "output": PRICE_OUT}},
        http_allow_hosts=(f"127.0.0.1:{fake.port}",),
        http_timeout=1.0,
        http_max_response_bytes=1000,
    )
    server = InProcessServer(settings)
    c = connect(server.address, bearer(mint_key(url, "acme")))
    yield Models(c, fake)
    c.close()
    server.stop()
    fake.close()


def llm_flow(m: Models, model: str = "openai/stream", **llm: object) -> pb.LiveFlow:
    graph = linear(
        step("start", "START"),
        step("ask", "LLM", "Tell me about ${inputs.topic}", llm=pb.LlmConfig(model=model, **llm)),  # type: ignore[arg-type]
        step("end", "END", "${ask.result}"),
    )
    return m.client.flows.CreateLiveFlow(create_request(graph=graph))


def run(m: Models, flow: pb.LiveFlow, **options: object) -> pb.FlowRun:
    return m.client.runs.RunFlow(
        fr.RunFlowRequest(
            flow_id=flow.id, body=struct(topic="tides"), options=pb.RunOptions(**options)
        )
    )  # type: ignore[arg-type]


def test_llm_step_answers_through_the_openai_sdk(models: Models) -> None:
    r = run(models, llm_flow(models))
    assert r.status == pb.RUN_STATUS_COMPLETE
    assert r.response == "Tell me about tides"
    sent = models.fake.requests[-1]
    assert sent["model"] == "stream" and sent["stream"] is True
    assert sent["messages"][-1] == {"role": "user", "content": "Tell me about tides"}
    assert models.fake.headers[-1]["authorization"] == f"Bearer {API_KEY}"


def test_streamed_deltas_arrive_in_order_and_add_up_to_the_result(models: Models) -> None:
    flow = llm_flow(models)
    events = list(
        models.client.runs.StreamRunFlow(
            fr.StreamRunFlowRequest(flow_id=flow.id, body=struct(topic="tides"))
        )
    )
    deltas = [e.delta for e in events if e.type == pb.RUN_EVENT_TYPE_STEP_DELTA]
    completed = next(
        e
        for e in events
        if e.type == pb.RUN_EVENT_TYPE_STEP_COMPLETED and e.step.step.name == "ask"
    )
    assert len(deltas) == 3
    assert "".join(deltas) == completed.step.result == "Tell me about tides"
    started = next(
        i
        for i, e in enumerate(events)
        if e.type == pb.RUN_EVENT_TYPE_STEP_STARTED and e.step.step.name == "ask"
    )
    first_delta = next(i for i, e in enumerate(events) if e.type == pb.RUN_EVENT_TYPE_STEP_DELTA)
    assert started < first_delta


def test_usage_lands_on_the_step_and_costs_add_up(models: Models) -> None:
    flow = llm_flow(models)
    first = run(models, flow)
    second = run(models, flow, session_id=first.session_id)
    step_cost = (11 * PRICE_IN + 7 * PRICE_OUT) / 1_000_000
    ask = next(s for s in second.ai_message.steps if s.step.name == "ask")
    assert (ask.input_tokens, ask.output_tokens) == (11, 7)
    assert ask.cost == step_cost
    assert (second.input_tokens, second.output_tokens, second.cost) == (11, 7, step_cost)
    session = models.client.sessions.GetSession(ss.GetSessionRequest(id=first.session_id))
    total = 0.0
    for s in session.steps:
        total += s.cost
    assert session.cost == total == step_cost + step_cost
    assert [(c.type, c.name, c.input_tokens, c.output_tokens) for c in session.costs] == [
        ("model", "openai/stream", 22, 14)
    ]
    assert session.costs[0].cost == session.cost


def test_history_is_sent_before_the_prompt(models: Models) -> None:
    flow = llm_flow(models, include_history=True)
    first = run(models, flow)
    run(models, flow, session_id=first.session_id)
    sent = models.fake.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"] == "tides" and sent[1]["content"] == "Tell me about tides"


def test_system_prompt_and_settings_reach_the_request(models: Models) -> None:
    run(
        models,
        llm_flow(
            models, system_prompt="Be brief about ${inputs.topic}.", temperature=0.3, max_tokens=50
        ),
    )
    sent = models.fake.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief about tides."}
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == 50


def test_overrides_reach_the_request(models: Models) -> None:
    flow = llm_flow(models)
    run(
        models,
        flow,
        override=struct(
            **{"ask.temperature": 1.5, "ask.max_tokens": 9, "ask.system_prompt": "Pirate."}
        ),
    )
    sent = models.fake.requests[-1]
    assert sent["temperature"] == 1.5 and sent["max_tokens"] == 9
    assert sent["messages"][0] == {"role": "system", "content": "Pirate."}


def test_chat_template_sends_its_messages(models: Models) -> None:
    chat = step("ask", "LLM", llm=pb.LlmConfig(model="openai/stream"))
    chat.prompt_template.CopyFrom(
        pb.PromptTemplate(
            type="chat",
            messages=[
                pb.ChatMessageTemplate(role="system", content="You know ${inputs.topic}."),
                pb.ChatMessageTemplate(role="user", content="Explain ${inputs.topic}."),
            ],
        )
    )
    flow = models.client.flows.CreateLiveFlow(
        create_request(
            graph=linear(step("start", "START"), chat, step("end", "END", "${ask.result}"))
        )
    )
    r = run(models, flow)
    assert models.fake.requests[-1]["messages"] == [
        {"role": "system", "content": "You know tides."},
        {"role": "user", "content": "Explain tides."},
    ]
    assert r.response == "Explain tides."


def test_rate_limited_request_is_retried(models: Models) -> None:
    model = f"flaky-{uuid.uuid4().hex[:8]}"
    r = run(models, llm_flow(models, f"openai/{model}"))
    assert r.status == pb.RUN_STATUS_COMPLETE
    assert models.fake.attempts[model] == 2


def test_retries_stop_at_their_limit(models: Models) -> None:
    before = models.fake.attempts["always-429"]
    r = run(models, llm_flow(models, "openai/always-429"))
    assert r.status == pb.RUN_STATUS_ERROR
    assert "429" in r.error and "ask" in r.error
    assert models.fake.attempts["always-429"] - before == 3  # the first try and 2 retries


def test_server_error_fails_the_step_naming_it(models: Models) -> None:
    r = run(models, llm_flow(models, "openai/server-error"))
    assert r.status == pb.RUN_STATUS_ERROR and "500" in r.error and "fell over" in r.error


def test_provider_errors_never_carry_a_key(models: Models) -> None:
    r = run(models, llm_flow(models, "openai/bad-request"))
    assert r.status == pb.RUN_STATUS_ERROR and "400" in r.error
    assert API_KEY not in r.error and "sk-test" not in r.error


def test_slow_model_times_out(models: Models) -> None:
    r = run(models, llm_flow(models, "openai/slow"))
    assert r.status == pb.RUN_STATUS_ERROR and "within" in r.error


def test_malformed_stream_fails_the_step(models: Models) -> None:
    r = run(models, llm_flow(models, "openai/malformed"))
    assert r.status == pb.RUN_STATUS_ERROR and "ask" in r.error


def test_failed_step_keeps_what_completed(models: Models) -> None:
    graph = linear(
        step("start", "START"),
        step("first", "LLM", "one ${inputs.topic}", llm=pb.LlmConfig(model="openai/stream")),
        step("second", "LLM", "two", llm=pb.LlmConfig(model="openai/server-error")),
        step("end", "END", "${second.result}"),
    )
    r = run(models, models.client.flows.CreateLiveFlow(create_request(graph=graph)))
    assert r.status == pb.RUN_STATUS_ERROR and "second" in r.error
    session = models.client.sessions.GetSession(ss.GetSessionRequest(id=r.session_id))
    assert session.status == pb.SESSION_STATUS_FAILED
    assert [(s.step.name, s.status) for s in session.steps] == [
        ("start", pb.STEP_STATUS_COMPLETED),
        ("first", pb.STEP_STATUS_COMPLETED),
        ("second", pb.STEP_STATUS_FAILED),
    ]
    assert session.steps[1].result == "one tides"


def test_unconfigured_provider_fails_clearly(models: Models) -> None:
    r = run(models, llm_flow(models, "nowhere/model"))
    assert r.status == pb.RUN_STATUS_ERROR and "nowhere/model" in r.error


# -- HTTP tool steps -------------------------------------------------------------------


def http_flow(m: Models, url: str, method: str = "POST", body: str = "") -> pb.LiveFlow:
    call = step(
        "call",
        "HTTP",
        http=pb.HttpConfig(
            method=method, url=url, body=body, headers={"X-Test": "${inputs.topic}"}
        ),
    )
    graph = linear(step("start", "START"), call, step("end", "END", "${call.result}"))
    return m.client.flows.CreateLiveFlow(create_request(graph=graph))


def test_http_step_calls_an_allowed_host_with_templates(models: Models) -> None:
    r = run(
        models,
        http_flow(
            models, f"{models.fake.url}/tool/echo?q=${{inputs.topic}}", body="about ${inputs.topic}"
        ),
    )
    assert r.status == pb.RUN_STATUS_COMPLETE
    assert '"body": "about tides"' in r.response and '"x-test": "tides"' in r.response
    call = next(s for s in r.ai_message.steps if s.step.name == "call")
    assert call.prompt.startswith(f"POST {models.fake.url}/tool/echo?q=tides")


def test_http_step_with_a_json_body_keeps_a_quote_in_a_value_inside_its_string(
    models: Models,
) -> None:
    call = step(
        "call",
        "HTTP",
        http=pb.HttpConfig(
            method="POST",
            url=f"{models.fake.url}/tool/echo",
            body='{"topic": "${inputs.topic}", "strict": true}',
            headers={"Content-Type": "application/json"},
        ),
    )
    graph = linear(step("start", "START"), call, step("end", "END", "${call.result}"))
    flow = models.client.flows.CreateLiveFlow(create_request(graph=graph))
    r = models.client.runs.RunFlow(
        fr.RunFlowRequest(flow_id=flow.id, body=struct(topic='tides", "strict": false, "x": "'))
    )
    assert r.status == pb.RUN_STATUS_COMPLETE, r.error
    sent = json.loads(json.loads(r.response)["body"])
    assert sent == {"topic": 'tides", "strict": false, "x": "', "strict": True}


def test_http_non_2xx_fails_with_status_and_excerpt(models: Models) -> None:
    r = run(models, http_flow(models, f"{models.fake.url}/tool/fail"))
    assert r.status == pb.RUN_STATUS_ERROR and "503" in r.error and "upstream says no" in r.error
    assert len(r.error) < 600


def test_http_oversized_response_fails(models: Models) -> None:
    r = run(models, http_flow(models, f"{models.fake.url}/tool/big", method="GET"))
    assert r.status == pb.RUN_STATUS_ERROR and "larger than 1000 bytes" in r.error


def test_http_timeout_fails(models: Models) -> None:
    r = run(models, http_flow(models, f"{models.fake.url}/tool/slow", method="GET"))
    assert r.status == pb.RUN_STATUS_ERROR and "timed out" in r.error


def test_http_host_not_on_the_allow_list_is_refused(models: Models) -> None:
    r = run(models, http_flow(models, "http://127.0.0.1:9/anything"))
    assert r.status == pb.RUN_STATUS_ERROR and "allow-list" in r.error


def test_http_redirect_to_a_host_not_allowed_is_refused(models: Models) -> None:
    r = run(
        models,
        http_flow(
            models,
            f"{models.fake.url}/tool/redirect?to=http://127.0.0.2:{models.fake.port}/tool/echo",
            method="GET",
        ),
    )
    assert r.status == pb.RUN_STATUS_ERROR and "allow-list" in r.error


def test_cancel_stops_the_step_in_flight(models: Models) -> None:
    """Cancel is real: the run waiting on a slow model is stopped, not waited for."""
    import threading

    flow = llm_flow(models, "openai/slow")
    before = models.fake.attempts["slow"]
    result: list[pb.FlowRun] = []
    caller = threading.Thread(target=lambda: result.append(run(models, flow)))
    caller.start()
    from tests.harness import wait_until

    wait_until(lambda: models.fake.attempts["slow"] > before, timeout=30)
    listed = models.client.runs.ListFlowRuns(fr.ListFlowRunsRequest(flow_id=flow.id))
    (running,) = listed.flow_runs
    cancelled = models.client.runs.CancelFlowRun(fr.CancelFlowRunRequest(id=running.id))
    assert cancelled.status == pb.RUN_STATUS_CANCELLED
    ask = next(s for s in cancelled.ai_message.steps if s.step.name == "ask")
    assert ask.status == pb.STEP_STATUS_CANCELLED
    caller.join(timeout=30)
    assert result and result[0].status == pb.RUN_STATUS_CANCELLED
    events = list(models.client.runs.WatchRun(fr.WatchRunRequest(run_id=running.id)))
    assert events[-1].type == pb.RUN_EVENT_TYPE_RUN_CANCELLED


def test_history_holds_the_given_messages_and_is_read_back_by_a_server_that_did_not_write_it(
    tmp_path: Path,
) -> None:
    """A session's conversation is stored one message a row: the messages it was created
    with, then each run's two; a server that never held the session reads them all back."""
    fake = FakeOpenAI()
    url = sqlite_url(tmp_path / "db.sqlite")
    settings = Settings(
        listen="127.0.0.1:0",
        database_url=url,
        openai_base_url=f"{fake.url}/v1",
        openai_api_key=API_KEY,
    )
    key = mint_key(url, "acme")
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(fake.close)
        with contextlib.ExitStack() as first_life:
            first = InProcessServer(settings)
            first_life.callback(first.stop)
            m = Models(connect(first.address, bearer(key)), fake)
            first_life.callback(m.client.close)
            flow = llm_flow(m, include_history=True)
            given = [
                pb.Message(role="user", content="earlier"),
                pb.Message(role="assistant", content="before"),
            ]
            session = m.client.sessions.CreateSession(
                ss.CreateSessionRequest(
                    live_flow_id=flow.id, inputs=struct(topic="tides"), messages=given, wait=True
                )
            )
            assert [(t["role"], t["content"]) for t in fake.requests[-1]["messages"]] == [
                ("user", "earlier"),
                ("assistant", "before"),
                ("user", "Tell me about tides"),
            ]
            run(m, flow, session_id=session.id)

        second = InProcessServer(settings)
        cleanup.callback(second.stop)
        m = Models(connect(second.address, bearer(key)), fake)
        cleanup.callback(m.client.close)
        before = m.client.sessions.GetSession(ss.GetSessionRequest(id=session.id)).messages
        assert [(x.role, x.content) for x in before] == [
            ("user", "earlier"),
            ("assistant", "before"),
            ("user", "tides"),
            ("assistant", "Tell me about tides"),
            ("user", "tides"),
            ("assistant", "Tell me about tides"),
        ]
        last = run(m, flow, session_id=session.id)
        sent = [(t["role"], t["content"]) for t in fake.requests[-1]["messages"]]
        assert sent == [(x.role, x.content) for x in before] + [("user", "Tell me about tides")]
        after = m.client.sessions.GetSession(ss.GetSessionRequest(id=session.id)).messages
        assert [x.id for x in after] == [x.id for x in before] + [
            last.user_message.id,
            last.ai_message.id,
        ]
