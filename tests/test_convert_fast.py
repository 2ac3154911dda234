"""The response and request conversions that skip protobuf's pure-Python paths (a step
definition's pb kept per flow version, Struct to dict without MessageToDict, eval_options
bytes kept by their JSON text) answer exactly what the slow paths answer."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from flowsvc.api.convert import flows as flow_convert
from flowsvc.api.convert import records as record_convert
from flowsvc.api.convert import (
    run_options_from_pb,
    run_to_pb,
    session_step_to_pb,
    step_from_pb,
    step_to_pb,
    struct_to_dict,
    version_to_pb,
)
from flowsvc.domain import model, runs
from flowsvc.v1 import resources_pb2 as pb

AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)

STEPS = [
    model.Step(
        id="s1",
        name="start",
        step_type=model.StepType.START,
        start=model.StartConfig(
            inputs=(model.FlowInput("question", True, "what to answer"), model.FlowInput("x"))
        ),
    ),
    model.Step(
        id="s2",
        name="draft",
        step_type=model.StepType.LLM,
        prompt_template=model.PromptTemplate(
            type="chat",
            text="Answer: ${inputs.question}",
            messages=(model.ChatMessageTemplate("system", "Be brief ✓"),),
        ),
        llm=model.LlmConfig(model="builtin/echo", temperature=0.0, max_tokens=None),
    ),
    model.Step(
        id="s3",
        name="fetch",
        step_type=model.StepType.HTTP,
        http=model.HttpConfig(
            method="POST", url="http://x/y", headers=(("a", "1"), ("b", "2")), timeout_ms=5
        ),
    ),
    model.Step(id="s4", name="blank", step_type=None, prompt_template=model.PromptTemplate()),
]


@pytest.mark.parametrize("step", STEPS, ids=[s.name for s in STEPS])
def test_a_kept_step_definition_is_what_a_fresh_conversion_gives(step: model.Step) -> None:
    fresh = flow_convert._definition(step)
    fresh.created_at.CopyFrom(flow_convert.timestamp(AT))
    fresh.updated_at.CopyFrom(flow_convert.timestamp(AT))
    first = step_to_pb(step, AT, "version-1")
    again = step_to_pb(step, AT, "version-1")  # from the cache
    # Equal as messages: a map (HTTP headers) has no order of its own on the wire.
    assert first == fresh
    assert again == fresh
    assert again.HasField("prompt_template") == (step.prompt_template is not None)
    # What the response says of the step reads back as the step.
    assert step_from_pb(again) == step


def test_a_kept_definition_is_used_only_for_an_equal_step() -> None:
    one = model.Step(id="", name="a", step_type=model.StepType.END)
    other = model.Step(id="", name="b", step_type=model.StepType.END)
    assert step_to_pb(one, AT, "v").name == "a"
    assert step_to_pb(other, AT, "v").name == "b"  # same key, another step
    assert step_to_pb(one, AT, "v").name == "a"


def test_changing_a_response_step_leaves_the_kept_definition_alone() -> None:
    step = STEPS[1]
    answer = step_to_pb(step, AT, "version-2")
    answer.name = "changed"
    answer.prompt_template.text = "changed"
    again = step_to_pb(step, AT, "version-2")
    assert (again.name, again.prompt_template.text) == ("draft", "Answer: ${inputs.question}")


def test_the_cache_of_definitions_is_bounded() -> None:
    for n in range(flow_convert.DEFINITIONS_KEPT + 10):
        step_to_pb(STEPS[0], AT, f"v{n}")
    assert len(flow_convert._DEFINITIONS) <= flow_convert.DEFINITIONS_KEPT


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**70), max_value=2**70)  # big ones arrive as floats
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_struct_to_dict_is_message_to_dict(values: dict[str, Any]) -> None:
    message = struct_pb2.Struct()
    message.update(values)
    assert struct_to_dict(message) == json_format.MessageToDict(message)
    assert repr(struct_to_dict(message)) == repr(json_format.MessageToDict(message))


def test_struct_to_dict_of_a_value_without_a_kind_is_null() -> None:
    message = struct_pb2.Struct()
    message.fields["nothing"].Clear()  # on the wire: a Value with no field set
    message.fields["list"].list_value.values.add()
    assert struct_to_dict(message) == json_format.MessageToDict(message)
    assert struct_to_dict(message) == {"nothing": None, "list": [None]}


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_struct_to_dict_refuses_what_message_to_dict_refuses(number: float) -> None:
    message = struct_pb2.Struct()
    message.update({"a": [{"b": number}]})
    with pytest.raises(ValueError) as expected:
        json_format.MessageToDict(message)
    with pytest.raises(ValueError) as got:
        struct_to_dict(message)
    assert str(got.value) == str(expected.value)


def test_options_without_eval_options_read_as_message_to_dict_reads_them() -> None:
    options = pb.RunOptions()
    assert run_options_from_pb(options).eval_options == json_format.MessageToDict(
        options.eval_options, preserving_proto_field_name=True
    )
    options.eval_options.run_mode = pb.EVAL_RUN_MODE_SKIP
    assert run_options_from_pb(options).eval_options == {"run_mode": "EVAL_RUN_MODE_SKIP"}


def _finished_run(**fields: Any) -> runs.FlowRun:
    defaults: dict[str, Any] = {
        "id": "r",
        "organisation_id": "o",
        "flow_id": "f",
        "session_id": "s",
        "flow_version_id": "v",
        "version": 1,
        "body": {},
        "override": {},
        "status": runs.RunStatus.COMPLETE,
        "created_at": AT,
        "updated_at": AT,
    }
    return runs.FlowRun(**(defaults | fields))


@pytest.mark.parametrize(
    "eval_options",
    [
        {"runs": []},
        {"run_mode": "EVAL_RUN_MODE_BLOCK", "runs": [{"flow_eval_id": "e1"}]},
        {"runs": [{"flow_eval_id": "e1", "flow_eval_external_input": {"n": 1}}]},
        {"runs": [{"flow_eval_id": "e1", "flow_eval_external_input": {"n": 1.5}}]},
        {"runs": [{"flow_eval_id": "e1", "flow_eval_external_input": True}]},
        {"runs": [{"flow_eval_id": "e2"}, {"flow_eval_id": "e1"}]},
    ],
)
def test_a_runs_eval_options_are_what_parse_dict_makes(eval_options: dict[str, Any]) -> None:
    run = _finished_run(eval_options=eval_options)
    expected = pb.FlowRun()
    json_format.ParseDict(eval_options, expected.eval_options)
    for _ in range(2):  # made, then kept
        got = run_to_pb(run)
        assert got.HasField("eval_options")
        assert got.eval_options.SerializeToString() == expected.eval_options.SerializeToString()


def test_the_cache_of_eval_options_is_bounded() -> None:
    for n in range(record_convert.EVAL_OPTIONS_KEPT + 10):
        record_convert._eval_options_bytes({"runs": [{"flow_eval_id": f"e{n}"}]})
    assert len(record_convert._EVAL_OPTIONS) <= record_convert.EVAL_OPTIONS_KEPT


def _session_step(n: int, step: model.Step) -> runs.SessionStep:
    return runs.SessionStep(
        id=f"ss{n}",
        session_id="s",
        run_id="r",
        organisation_id="o",
        position=n,
        flow_version_id="version-3",
        step=step,
        status=runs.StepStatus.COMPLETED,
        created_at=AT,
        updated_at=AT.replace(microsecond=n),
        prompt="p",
        result="r",
        input_tokens=n,
    )


def test_a_runs_steps_are_its_session_steps_with_their_definitions() -> None:
    steps = [_session_step(n, step) for n, step in enumerate(STEPS)]
    run = _finished_run(flow_version_id="version-3", body={"question": "q"}, steps=steps)
    for _ in range(2):  # definitions made, then kept
        listed = run_to_pb(run).ai_message.steps
        assert len(listed) == len(steps)
        for got, s in zip(listed, steps, strict=True):
            assert got == session_step_to_pb(s)
            assert got.step == step_to_pb(s.step, s.created_at, "version-3")
            assert (got.id, got.input_tokens, got.step.name) == (s.id, s.input_tokens, s.step.name)
            assert got.updated_at.ToDatetime(tzinfo=UTC) == s.updated_at


def test_a_versions_steps_are_its_definitions_at_its_time() -> None:
    version = model.FlowVersion(
        id="version-4",
        flow_id="f",
        organisation_id="o",
        version=4,
        graph=model.Graph(steps=tuple(STEPS), transitions=()),
        created_at=AT,
    )
    got = version_to_pb(version)
    assert list(got.steps) == [step_to_pb(s, AT, "elsewhere") for s in STEPS]
