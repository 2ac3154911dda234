"""ForkSession: a new session from a completed step of another, against a loopback model
endpoint that counts the calls (copied steps are not executed again)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from flowsvc.config import Settings
from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import live_flow_service_pb2 as lf
from flowsvc.v1 import resources_pb2 as pb
from flowsvc.v1 import session_service_pb2 as ss
from tests.conftest import database_for
from tests.errors import invalid, reused_request_id, rpc_error
from tests.fake_openai import FakeOpenAI
from tests.graphs import chain5, create_request, linear, step, struct, with_input
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

MODEL = "openai/stream"


@dataclass
class Forks:
    client: Client
    other: Client
    fake: FakeOpenAI
    chain: pb.LiveFlow


def on_model(graph: tuple[list[pb.Step], list[pb.StepTransition]]) -> tuple:  # type: ignore[type-arg]
    """The graph with its LLM steps on the loopback model."""
    steps, transitions = graph
    for s in steps:
        if s.step_type == pb.STEP_TYPE_LLM:
            s.llm.model = MODEL
    return steps, transitions


@pytest.fixture(scope="module")
def forks(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[Forks]:
    fake = FakeOpenAI()
    with database_for(tmp_path_factory, backend) as url:
        settings = Settings(
            listen="127.0.0.1:0",
            database_url=url,
            openai_base_url=f"{fake.url}/v1",
            openai_api_key="sk-test",
            model_prices={MODEL: {"input": 1.5, "output": 2.0}},
        )
        server = InProcessServer(settings)
        c = connect(server.address, bearer(mint_key(url, "acme")))
        other = connect(server.address, bearer(mint_key(url, "globex")))
        chain = c.flows.CreateLiveFlow(create_request("chain5", graph=on_model(chain5())))
        try:
            yield Forks(c, other, fake, chain)
        finally:
            c.close()
            other.close()
            server.stop()
            fake.close()


def finished_session(f: Forks, question: str = "tides") -> pb.Session:
    return f.client.sessions.CreateSession(
        ss.CreateSessionRequest(
            live_flow_id=f.chain.id, inputs=struct(question=question), wait=True
        )
    )


def fork(f: Forks, session: pb.Session, step_id: str, **fields: object) -> pb.Session:
    return f.client.sessions.ForkSession(
        ss.ForkSessionRequest(session_id=session.id, step_id=step_id, **fields)  # type: ignore[arg-type]
    )


def prompts_sent(f: Forks, since: int) -> list[str]:
    return [r["messages"][-1]["content"] for r in f.fake.requests[since:]]


def event_log(client: Client, session_id: str) -> list[tuple[int, str, int]]:
    """(seq, run id, type) of every committed event of the session's runs."""
    runs = client.runs.ListFlowRuns(fr.ListFlowRunsRequest(session_id=session_id, page_size=100))
    out = []
    for run in runs.flow_runs:
        for e in client.runs.WatchRun(fr.WatchRunRequest(run_id=run.id)):
            out.append((e.seq, e.run_id, e.type))
    return sorted(out)


def copied_fields(s: pb.SessionStep) -> tuple:  # type: ignore[type-arg]
    return (s.step.name, s.status, s.prompt, s.result, s.error, s.user_input,
            s.input_tokens, s.output_tokens, s.cost)


def test_fork_from_every_step_reruns_that_step_and_the_later_ones(forks: Forks) -> None:
    source = finished_session(forks)
    assert source.status == pb.SESSION_STATUS_COMPLETED
    before = forks.client.sessions.GetSession(ss.GetSessionRequest(id=source.id))
    log_before = event_log(forks.client, source.id)
    names = [s.step.name for s in source.steps]
    assert names == ["start", "draft", "critique", "final", "end"]
    for i, forked in enumerate(source.steps):
        calls = len(forks.fake.requests)
        new = fork(forks, source, forked.id, inputs=struct(question="volcanoes"), wait=True)
        assert new.status == pb.SESSION_STATUS_COMPLETED, new.error
        assert new.id != source.id
        assert new.parent_session_id == source.id
        assert new.forked_from_step_id == forked.id
        assert new.live_flow_id == source.live_flow_id
        assert new.inputs["question"] == "volcanoes"
        assert [s.step.name for s in new.steps] == names
        assert [s.status for s in new.steps] == [pb.STEP_STATUS_COMPLETED] * 5
        # Before the step: copies (new ids, same contents); from it on: executed again.
        for old, copy in zip(source.steps[:i], new.steps[:i], strict=True):
            assert copy.id != old.id
            assert copied_fields(copy) == copied_fields(old)
        assert not {s.id for s in new.steps} & {s.id for s in source.steps}
        question = "volcanoes" if i <= 1 else "tides"
        draft = f"Answer briefly: {question}"
        critique = f"Critique: {draft}"
        final = f"Improve: {draft} | {critique}"
        expected = {"draft": draft, "critique": critique, "final": final, "end": final}
        for s in new.steps:
            if s.step.name in expected:
                assert s.result == expected[s.step.name], (i, s.step.name)
        rerun = [p for n, p in (("draft", draft), ("critique", critique), ("final", final))
                 if names.index(n) >= i]
        assert prompts_sent(forks, calls) == rerun
        # One run in the fork (the forked one, again), holding all five steps.
        runs = forks.client.runs.ListFlowRuns(fr.ListFlowRunsRequest(session_id=new.id))
        assert len(runs.flow_runs) == 1 and runs.flow_runs[0].status == pb.RUN_STATUS_COMPLETE
        assert {s.run_id for s in new.steps} == {runs.flow_runs[0].id}
        assert runs.flow_runs[0].response == final
        assert [(m.role, m.content) for m in new.messages] == [
            ("user", "volcanoes"), ("assistant", final)
        ]
        assert new.cost == pytest.approx(sum(s.cost for s in new.steps))
        (entry,) = new.costs
        assert entry.name == MODEL
        assert entry.input_tokens == sum(s.input_tokens for s in new.steps)
    after = forks.client.sessions.GetSession(ss.GetSessionRequest(id=source.id))
    assert after == before
    assert event_log(forks.client, source.id) == log_before


def test_fork_keeps_the_runs_and_messages_before_the_step(forks: Forks) -> None:
    first = finished_session(forks, "one")
    for question in ("two", "three"):
        forks.client.runs.RunFlow(
            fr.RunFlowRequest(
                flow_id=forks.chain.id,
                body=struct(question=question),
                options=pb.RunOptions(session_id=first.id),
            )
        )
    source = forks.client.sessions.GetSession(ss.GetSessionRequest(id=first.id))
    assert len(source.steps) == 15 and len(source.messages) == 6
    runs = [r.id for r in reversed(forks.client.runs.ListFlowRuns(
        fr.ListFlowRunsRequest(session_id=source.id)).flow_runs)]
    second_draft = next(s for s in source.steps if s.run_id == runs[1] and s.step.name == "draft")
    calls = len(forks.fake.requests)
    new = fork(forks, source, second_draft.id, override=struct(**{"draft.temperature": 0.5}),
               variables=struct(tone="dry"), wait=True)
    assert dict(new.variables) == {"tone": "dry"}
    assert new.status == pb.SESSION_STATUS_COMPLETED, new.error
    assert len(prompts_sent(forks, calls)) == 3
    assert forks.fake.requests[calls]["temperature"] == 0.5
    # The first run's pair, then the forked run's (the third run never happened here).
    assert [m.content for m in new.messages[:2]] == [m.content for m in source.messages[:2]]
    assert not {m.id for m in new.messages} & {m.id for m in source.messages}
    assert [m.content for m in new.messages[2:]] == ["two", "Improve: Answer briefly: two | "
                                                     "Critique: Answer briefly: two"]
    fork_runs = list(reversed(forks.client.runs.ListFlowRuns(
        fr.ListFlowRunsRequest(session_id=new.id)).flow_runs))
    assert len(fork_runs) == 2
    copied_run, forked_run = fork_runs
    assert copied_run.id not in runs and copied_run.status == pb.RUN_STATUS_COMPLETE
    assert [copied_run.user_message.id, copied_run.ai_message.id] == [
        m.id for m in new.messages[:2]
    ]
    assert copied_run.response == forks.client.runs.GetFlowRun(
        fr.GetFlowRunRequest(id=runs[0])).response
    assert [s.run_id for s in new.steps] == [copied_run.id] * 5 + [forked_run.id] * 5
    assert forked_run.override["draft.temperature"] == 0.5
    assert new.cost == pytest.approx(sum(s.cost for s in new.steps))
    # A fork of the fork, at a copied step of its copied run.
    again = fork(forks, new, new.steps[2].id, wait=True)
    assert again.status == pb.SESSION_STATUS_COMPLETED and again.parent_session_id == new.id
    assert [m.content for m in again.messages] == [m.content for m in source.messages[:2]]


def test_fork_stream_shows_only_the_steps_run_again(forks: Forks) -> None:
    source = finished_session(forks)
    new = fork(forks, source, source.steps[3].id)  # "final"
    seen = []
    stream = forks.client.sessions.WatchSession(ss.WatchSessionRequest(session_id=new.id))
    for event in stream:
        seen.append(event)
        if event.type == pb.RUN_EVENT_TYPE_RUN_COMPLETED:
            stream.cancel()
            break
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert seen[0].type == pb.RUN_EVENT_TYPE_RUN_STARTED
    started = [e.step.step.name for e in seen if e.type == pb.RUN_EVENT_TYPE_STEP_STARTED]
    assert started == ["final", "end"]


def test_fork_at_an_input_step_waits_for_a_new_answer(forks: Forks) -> None:
    flow = forks.client.flows.CreateLiveFlow(create_request("ask", graph=on_model(with_input())))
    waiting = forks.client.sessions.CreateSession(
        ss.CreateSessionRequest(live_flow_id=flow.id, inputs=struct(topic="tides"), wait=True)
    )
    ask = waiting.current_step
    # Not answered yet: not completed.
    err = rpc_error(lambda: fork(forks, waiting, ask.id), grpc.StatusCode.FAILED_PRECONDITION)
    status = rpc_status.from_call(err)
    assert status is not None
    failure = error_details_pb2.PreconditionFailure()
    assert status.details[0].Unpack(failure)
    assert failure.violations[0].subject == f"sessions/{waiting.id}/steps/{ask.id}"
    forks.client.sessions.SubmitUserInput(
        ss.SubmitUserInputRequest(session_id=waiting.id, user_input="why?", wait=True)
    )
    new = fork(forks, waiting, ask.id, inputs=struct(topic="moons"), wait=True)
    assert new.status == pb.SESSION_STATUS_WAITING_FOR_INPUT
    assert new.current_step.step.name == "ask"
    assert new.current_step.prompt == "What do you want to know about moons?"
    done = forks.client.sessions.SubmitUserInput(
        ss.SubmitUserInputRequest(session_id=new.id, user_input="how many?", wait=True)
    )
    assert done.status == pb.SESSION_STATUS_COMPLETED
    assert done.steps[-1].result == "Answer about moons: how many?"


def test_fork_errors(forks: Forks) -> None:
    source = finished_session(forks)
    steps, edges = on_model(
        linear(
            step("start", "START"),
            step("draft", "LLM", "Answer briefly: ${inputs.question}"),
            step("final", "LLM", "Improve v2: ${draft.result}"),
            step("end", "END", "${final.result}"),
        )
    )
    step_id = source.steps[1].id
    unknown = "0190a000-0000-7000-8000-000000000000"
    nf = grpc.StatusCode.NOT_FOUND
    rpc_error(lambda: forks.other.sessions.ForkSession(
        ss.ForkSessionRequest(session_id=source.id, step_id=step_id)), nf)
    rpc_error(lambda: fork(forks, source, unknown), nf)
    elsewhere = finished_session(forks)
    rpc_error(lambda: fork(forks, source, elsewhere.steps[1].id), nf)
    rpc_error(lambda: fork(forks, source, step_id, version=99), nf)
    assert "step_id" in invalid(lambda: fork(forks, source, ""))
    assert "session_id" in invalid(lambda: forks.client.sessions.ForkSession(
        ss.ForkSessionRequest(step_id=step_id)))
    both = invalid(lambda: forks.client.sessions.ForkSession(ss.ForkSessionRequest()))
    assert {"session_id", "step_id"} <= set(both)  # every missing id at once
    assert "version" in invalid(lambda: fork(forks, source, step_id, version=-1))
    assert "override['nope.model']" in invalid(
        lambda: fork(forks, source, step_id, override=struct(**{"nope.model": "x"})))
    assert "request_id" in invalid(lambda: fork(forks, source, step_id, request_id="r" * 129))
    # A version whose graph does not lead to the step from where the run was.
    v2 = forks.client.flows.CreateFlowVersion(
        lf.CreateFlowVersionRequest(flow_id=forks.chain.id, steps=steps, step_transitions=edges)
    )
    violations = invalid(lambda: fork(forks, source, source.steps[2].id, version=v2.version))
    assert "'final'" in violations["version"] and "'critique'" in violations["version"]
    moved = fork(forks, source, source.steps[1].id, version=v2.version, wait=True)
    assert moved.status == pb.SESSION_STATUS_COMPLETED
    assert moved.flow_version.version == v2.version
    assert moved.steps[-1].result == "Improve v2: Answer briefly: tides"


def test_fork_request_id(forks: Forks) -> None:
    source = finished_session(forks)
    first = fork(forks, source, source.steps[2].id, request_id="fork-1", wait=True)
    again = fork(forks, source, source.steps[2].id, request_id="fork-1", wait=True)
    assert again.id == first.id
    assert reused_request_id(
        lambda: fork(forks, source, source.steps[3].id, request_id="fork-1")) == "fork-1"
    assert reused_request_id(lambda: fork(
        forks, source, source.steps[2].id, inputs=struct(question="x"), request_id="fork-1"
    )) == "fork-1"


def test_killed_server_resumes_an_acknowledged_fork(tmp_path: Path) -> None:
    """The fork's session, copied steps and run commit before the answer: SIGKILL after it,
    and the next start runs the fork on from its step, never the copied ones again."""
    fake = FakeOpenAI()
    env = {"FLOWSVC_OPENAI_BASE_URL": f"{fake.url}/v1"}
    url = sqlite_url(tmp_path / "db.sqlite")
    key = mint_key(url, "acme")
    first = ChildServer(url, tmp_path / "first.log", extra_env=env)
    c = connect(first.address, bearer(key))
    graph = on_model(
        linear(
            step("start", "START"),
            step("draft", "LLM", "Draft: ${inputs.question}"),
            step("think", "LLM", "Think: ${draft.result}"),
            step("end", "END", "${think.result}"),
        )
    )
    flow = c.flows.CreateLiveFlow(create_request("killed", graph=graph))
    source = c.sessions.CreateSession(
        ss.CreateSessionRequest(live_flow_id=flow.id, inputs=struct(question="q"), wait=True)
    )
    assert source.status == pb.SESSION_STATUS_COMPLETED
    # The fork's "think" takes 5 s (model "slow"): it is surely going at the kill.
    new = c.sessions.ForkSession(
        ss.ForkSessionRequest(
            session_id=source.id,
            step_id=source.steps[2].id,
            override=struct(**{"think.model": "openai/slow"}),
        )
    )
    wait_until(lambda: fake.attempts["slow"] > 0, timeout=30)
    first.signal(signal.SIGKILL)
    first.wait()
    c.close()

    second = ChildServer(url, tmp_path / "second.log", extra_env=env)
    try:
        c = connect(second.address, bearer(key))
        wait_until(
            lambda: c.sessions.GetSession(ss.GetSessionRequest(id=new.id)).status
            == pb.SESSION_STATUS_COMPLETED,
            timeout=60,
        )
        done = c.sessions.GetSession(ss.GetSessionRequest(id=new.id))
        assert done.parent_session_id == source.id
        assert [s.step.name for s in done.steps] == ["start", "draft", "think", "end"]
        assert done.steps[1].result == source.steps[1].result == "Draft: q"
        assert done.steps[-1].result == "Think: Draft: q"
        assert fake.attempts["slow"] == 2  # the step going at the kill, again
        assert fake.attempts["stream"] == 2  # the source's draft and think only
        seqs = []
        for e in c.sessions.WatchSession(ss.WatchSessionRequest(session_id=new.id)):
            seqs.append(e.seq)
            if e.type == pb.RUN_EVENT_TYPE_RUN_COMPLETED:
                break
        assert seqs == list(range(1, len(seqs) + 1))
        c.close()
    finally:
        second.signal(signal.SIGTERM)
        second.wait()
        fake.close()
