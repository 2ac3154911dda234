"""Evaluations over gRPC: ASYNC, BLOCK and SKIP, auto-run defaults, parsing, failures."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from flowsvc.v1 import eval_service_pb2 as ev
from flowsvc.v1 import flow_run_service_pb2 as fr
from flowsvc.v1 import resources_pb2 as pb
from tests.errors import invalid
from tests.graphs import create_request, linear, long_chain, step, struct
from tests.harness import ChildServer, Client, bearer, connect, mint_key, sqlite_url, wait_until

QUESTION = struct(question="q")


def judge(client: Client, text: str) -> pb.LiveFlow:
    """An evaluation flow whose END renders `text` (it may use the evaluation inputs)."""
    graph = linear(step("start", "START"), step("end", "END", text))
    return client.flows.CreateLiveFlow(create_request("judge", graph=graph))


def evaluated(client: Client, **fields: object) -> pb.LiveFlow:
    return client.flows.CreateLiveFlow(create_request("evaluated", **fields))  # type: ignore[arg-type]


def value(v: object) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if isinstance(v, str):
        out.string_value = v
    elif isinstance(v, (int, float)):
        out.number_value = float(v)
    return out


def options(mode: int, *judges: tuple[pb.LiveFlow, object]) -> pb.RunOptions:
    return pb.RunOptions(
        eval_options=pb.EvalOptions(
            run_mode=mode,
            runs=[
                pb.EvalRun(flow_eval_id=j.id, flow_eval_external_input=value(x)) for j, x in judges
            ],
        )
    )


def run(client: Client, flow: pb.LiveFlow, opts: pb.RunOptions | None = None) -> pb.FlowRun:
    return client.runs.RunFlow(fr.RunFlowRequest(flow_id=flow.id, body=QUESTION, options=opts))


def finished_job(client: Client, job_id: str) -> pb.EvalJob:
    def done() -> bool:
        return client.evals.GetEvalJob(ev.GetEvalJobRequest(id=job_id)).status in (
            pb.EVAL_JOB_STATUS_COMPLETE,
            pb.EVAL_JOB_STATUS_ERROR,
        )

    wait_until(done, timeout=60)
    return client.evals.GetEvalJob(ev.GetEvalJobRequest(id=job_id))


def test_block_mode_answers_with_the_finished_results(client: Client) -> None:
    j = judge(client, "score: 0.8, passed: true")
    r = run(client, evaluated(client), options(pb.EVAL_RUN_MODE_BLOCK, (j, None)))
    assert r.status == pb.RUN_STATUS_COMPLETE
    assert r.eval_job.status == pb.EVAL_JOB_STATUS_COMPLETE
    (result,) = r.eval_job.results
    assert (result.flow_eval_id, result.score, result.passed, result.error) == (j.id, 0.8, True, "")
    assert r.eval_job_id == r.eval_job.id


def test_async_mode_answers_at_once_and_the_job_finishes_after(client: Client) -> None:
    j = judge(client, "score: 0.3")
    r = run(client, evaluated(client), options(pb.EVAL_RUN_MODE_ASYNC, (j, None)))
    assert r.eval_job_id and not r.HasField("eval_job")
    job = finished_job(client, r.eval_job_id)
    assert job.run_id == r.id and job.results[0].score == 0.3 and job.results[0].passed is False


def test_unspecified_mode_is_async(client: Client) -> None:
    j = judge(client, "passed: yes")
    r = run(client, evaluated(client), options(pb.EVAL_RUN_MODE_UNSPECIFIED, (j, None)))
    assert r.eval_job_id and not r.HasField("eval_job")
    assert finished_job(client, r.eval_job_id).results[0].score == 1.0


def test_skip_mode_runs_no_evaluation(client: Client) -> None:
    j = judge(client, "score: 1")
    r = run(
        client,
        evaluated(client, auto_eval_flow_ids=[j.id]),
        options(pb.EVAL_RUN_MODE_SKIP, (j, None)),
    )
    assert r.eval_job_id == ""
    assert list(client.evals.ListEvalJobs(ev.ListEvalJobsRequest(run_id=r.id)).eval_jobs) == []


def test_auto_run_evaluations_are_used_when_none_are_named(client: Client) -> None:
    j = judge(client, '{"score": 0.6, "passed": false}')
    r = run(
        client,
        evaluated(client, auto_eval_flow_ids=[j.id]),
        pb.RunOptions(eval_options=pb.EvalOptions(run_mode=pb.EVAL_RUN_MODE_BLOCK)),
    )
    (result,) = r.eval_job.results
    assert (result.flow_eval_id, result.score, result.passed) == (j.id, 0.6, False)


def test_evaluation_sees_input_output_and_external_input(client: Client) -> None:
    j = judge(client, "score: ${inputs.external_input} | ${inputs.output} | ${inputs.input}")
    r = run(client, evaluated(client), options(pb.EVAL_RUN_MODE_BLOCK, (j, 0.75)))
    (result,) = r.eval_job.results
    assert result.score == 0.75
    assert r.response in result.output and '"question":"q"' in result.output


def test_evaluation_runs_are_flow_runs_linked_to_the_evaluated_run(client: Client) -> None:
    j = judge(client, "score: 1")
    r = run(client, evaluated(client), options(pb.EVAL_RUN_MODE_BLOCK, (j, None)))
    eval_run = client.runs.GetFlowRun(fr.GetFlowRunRequest(id=r.eval_job.results[0].eval_run_id))
    assert eval_run.parent_run_id == r.id and eval_run.flow_id == j.id


def test_a_response_without_score_or_passed_is_an_eval_error(client: Client) -> None:
    j = judge(client, "looks fine to me")
    r = run(client, evaluated(client), options(pb.EVAL_RUN_MODE_BLOCK, (j, None)))
    assert r.status == pb.RUN_STATUS_COMPLETE
    assert r.eval_job.status == pb.EVAL_JOB_STATUS_COMPLETE
    assert "neither" in r.eval_job.results[0].error
    assert "'looks fine to me'" in r.eval_job.results[0].error


def test_a_judge_that_pastes_an_object_into_its_json_still_gives_its_score(
    client: Client,
) -> None:
    # ${inputs.input} renders the evaluated run's body as JSON, unescaped inside the string.
    j = judge(client, '{"score": 0.75, "passed": true, "saw": "${inputs.input}"}')
    r = run(client, evaluated(client), options(pb.EVAL_RUN_MODE_BLOCK, (j, None)))
    (result,) = r.eval_job.results
    assert '"saw": "{"question":"q"}"' in result.output
    assert (result.score, result.passed, result.error) == (0.75, True, "")


def test_an_evaluation_flow_that_errors_leaves_the_run_complete(client: Client) -> None:
    broken = client.flows.CreateLiveFlow(
        create_request(
            "broken-judge",
            graph=linear(
                step("start", "START"),
                step("think", "LLM", "x", llm=pb.LlmConfig(model="builtin/missing")),
                step("end", "END", "${think.result}"),
            ),
        )
    )
    good = judge(client, "score: 1")
    r = run(
        client, evaluated(client), options(pb.EVAL_RUN_MODE_BLOCK, (broken, None), (good, None))
    )
    assert r.status == pb.RUN_STATUS_COMPLETE
    bad_result, good_result = r.eval_job.results
    assert "builtin/missing" in bad_result.error
    assert good_result.score == 1.0 and good_result.error == ""
    assert client.runs.GetFlowRun(fr.GetFlowRunRequest(id=r.id)).status == pb.RUN_STATUS_COMPLETE


def test_foreign_or_unknown_evaluation_flow_is_invalid_before_anything_runs(
    client: Client, other_org: Client
) -> None:
    theirs = judge(other_org, "score: 1")
    flow = evaluated(client)
    unknown = pb.LiveFlow(id="00000000-0000-4000-8000-000000000000")
    v = invalid(
        lambda: run(client, flow, options(pb.EVAL_RUN_MODE_BLOCK, (theirs, None), (unknown, None)))
    )
    assert {
        "options.eval_options.runs[0].flow_eval_id",
        "options.eval_options.runs[1].flow_eval_id",
    } <= set(v)
    assert list(client.runs.ListFlowRuns(fr.ListFlowRunsRequest(flow_id=flow.id)).flow_runs) == []


def test_stream_in_block_mode_ends_with_the_evaluation_results(client: Client) -> None:
    j = judge(client, "score: 0.9")
    flow = evaluated(client)
    events = list(
        client.runs.StreamRunFlow(
            fr.StreamRunFlowRequest(
                flow_id=flow.id, body=QUESTION, options=options(pb.EVAL_RUN_MODE_BLOCK, (j, None))
            )
        )
    )
    assert events[-1].type == pb.RUN_EVENT_TYPE_EVAL_COMPLETED
    assert events[-1].eval_job.results[0].score == 0.9
    assert events[-2].type == pb.RUN_EVENT_TYPE_RUN_COMPLETED
    assert events[-1].seq == events[-2].seq + 1


def test_stream_in_async_mode_ends_with_the_run_and_the_job_follows(client: Client) -> None:
    j = judge(client, "score: 0.9")
    events = list(
        client.runs.StreamRunFlow(
            fr.StreamRunFlowRequest(
                flow_id=evaluated(client).id,
                body=QUESTION,
                options=options(pb.EVAL_RUN_MODE_ASYNC, (j, None)),
            )
        )
    )
    assert events[-1].type == pb.RUN_EVENT_TYPE_RUN_COMPLETED
    job_id = events[-1].run.eval_job_id
    assert finished_job(client, job_id).status == pb.EVAL_JOB_STATUS_COMPLETE
    replay = list(
        client.runs.WatchRun(fr.WatchRunRequest(run_id=events[-1].run_id, after_seq=events[-1].seq))
    )
    assert [e.type for e in replay] == [pb.RUN_EVENT_TYPE_EVAL_COMPLETED]


def test_list_eval_jobs_by_run_and_by_flow(client: Client) -> None:
    j = judge(client, "score: 1")
    flow = evaluated(client)
    first = run(client, flow, options(pb.EVAL_RUN_MODE_BLOCK, (j, None)))
    second = run(client, flow, options(pb.EVAL_RUN_MODE_BLOCK, (j, None)))
    by_flow = client.evals.ListEvalJobs(ev.ListEvalJobsRequest(flow_id=flow.id))
    assert [x.id for x in by_flow.eval_jobs] == [second.eval_job_id, first.eval_job_id]
    by_run = client.evals.ListEvalJobs(ev.ListEvalJobsRequest(run_id=first.id))
    assert [x.id for x in by_run.eval_jobs] == [first.eval_job_id]
    paged = client.evals.ListEvalJobs(ev.ListEvalJobsRequest(flow_id=flow.id, page_size=1))
    assert len(paged.eval_jobs) == 1 and paged.next_page_token


def test_other_organisation_cannot_read_eval_jobs(client: Client, other_org: Client) -> None:
    j = judge(client, "score: 1")
    r = run(client, evaluated(client), options(pb.EVAL_RUN_MODE_BLOCK, (j, None)))
    with pytest.raises(grpc.RpcError) as info:
        other_org.evals.GetEvalJob(ev.GetEvalJobRequest(id=r.eval_job_id))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert list(other_org.evals.ListEvalJobs(ev.ListEvalJobsRequest(run_id=r.id)).eval_jobs) == []


def test_async_job_interrupted_by_sigkill_finishes_after_restart(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "db.sqlite")
    key = mint_key(url, "acme")
    first = ChildServer(url, tmp_path / "first.log")
    c = connect(first.address, bearer(key))
    slow_judge = c.flows.CreateLiveFlow(create_request("slow-judge", graph=long_chain(450)))
    # The long chain's END renders "go....": no verdict, so the result is an eval error;
    # what this test checks is that the job finishes at all after the restart.
    flow = evaluated(c)
    jobs = []
    for _ in range(6):
        r = run(c, flow, options(pb.EVAL_RUN_MODE_ASYNC, (slow_judge, None), (slow_judge, None)))
        jobs.append(r.eval_job_id)
    first.signal(signal.SIGKILL)
    first.wait()
    c.close()
    second = ChildServer(url, tmp_path / "second.log")
    try:
        c = connect(second.address, bearer(key))
        for job_id in jobs:
            job = finished_job(c, job_id)
            assert job.status == pb.EVAL_JOB_STATUS_COMPLETE
            assert all(res.eval_run_id and "neither" in res.error for res in job.results)
        c.close()
    finally:
        second.signal(signal.SIGTERM)
        second.wait()
    assert "resumed evaluation jobs" in (tmp_path / "second.log").read_text()


def test_a_job_lost_between_run_and_job_is_written_on_restart(tmp_path: Path) -> None:
    import sqlite3

    url = sqlite_url(tmp_path / "db.sqlite")
    key = mint_key(url, "acme")
    first = ChildServer(url, tmp_path / "first.log")
    c = connect(first.address, bearer(key))
    j = judge(c, "score: 0.5")
    r = run(c, evaluated(c), options(pb.EVAL_RUN_MODE_BLOCK, (j, None)))
    c.close()
    first.signal(signal.SIGTERM)
    first.wait()
    # As if the process died after the run's last commit and before its job's.
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        db.execute("DELETE FROM eval_jobs WHERE id = ?", (r.eval_job_id,))
    second = ChildServer(url, tmp_path / "second.log")
    try:
        c = connect(second.address, bearer(key))
        job = finished_job(c, r.eval_job_id)
        assert job.run_id == r.id and job.results[0].score == 0.5
        c.close()
    finally:
        second.signal(signal.SIGTERM)
        second.wait()
