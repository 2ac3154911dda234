"""Every graph rule refuses a bad graph with INVALID_ARGUMENT and a field violation
pointing at the field to blame."""

from __future__ import annotations

import pytest

from flowsvc.v1 import live_flow_service_pb2 as svc
from flowsvc.v1 import resources_pb2 as pb
from tests.errors import invalid
from tests.graphs import create_request, edge, linear, step
from tests.harness import Client

START = step("start", "START")
END = step("end", "END", "${llm.result}")
LLM = step("llm", "LLM", "hello")


def violations(
    client: Client, steps: list[pb.Step], transitions: list[pb.StepTransition]
) -> dict[str, str]:
    return invalid(lambda: client.flows.CreateLiveFlow(create_request(graph=(steps, transitions))))


def test_valid_graph_is_accepted(client: Client) -> None:
    assert (
        client.flows.CreateLiveFlow(
            create_request(graph=linear(START, LLM, END))
        ).current_version.version
        == 1
    )


def test_no_start_step(client: Client) -> None:
    v = violations(client, *linear(LLM, END))
    assert "START" in v["steps"]


def test_two_start_steps(client: Client) -> None:
    other = step("start2", "START")
    v = violations(
        client,
        [START, other, LLM, END],
        [edge("start", "llm"), edge("start2", "llm"), edge("llm", "end")],
    )
    assert "steps[1].step_type" in v


def test_no_end_step(client: Client) -> None:
    v = violations(client, *linear(START, LLM))
    assert "END" in v["steps"]


def test_no_steps_at_all(client: Client) -> None:
    v = invalid(
        lambda: client.flows.CreateFlowVersion(
            svc.CreateFlowVersionRequest(flow_id=client.flows.CreateLiveFlow(create_request()).id)
        )
    )
    assert "steps" in v


def test_step_name_must_be_an_identifier(client: Client) -> None:
    v = violations(client, *linear(START, step("bad name", "LLM", "x"), END))
    assert "steps[1].name" in v


def test_step_name_required(client: Client) -> None:
    v = violations(client, *linear(START, step("", "LLM", "x"), END))
    assert "steps[1].name" in v


@pytest.mark.parametrize("name", ["inputs", "vars"])
def test_reserved_step_names(client: Client, name: str) -> None:
    v = violations(client, *linear(START, step(name, "LLM", "x"), END))
    assert "steps[1].name" in v


def test_overlong_step_name(client: Client) -> None:
    v = violations(client, *linear(START, step("n" * 65, "LLM", "x"), END))
    assert "steps[1].name" in v


def test_duplicate_step_names(client: Client) -> None:
    v = violations(
        client,
        [START, LLM, step("llm", "LLM", "again"), END],
        [edge("start", "llm"), edge("llm", "end")],
    )
    assert "duplicate" in v["steps[2].name"]


def test_duplicate_client_step_ids(client: Client) -> None:
    a, b = step("a", "LLM", "x"), step("b", "LLM", "y")
    a.id = b.id = "same"
    v = violations(client, *linear(START, a, b, step("end", "END", "z")))
    assert "steps[2].id" in v


def test_step_type_required(client: Client) -> None:
    v = violations(client, *linear(START, pb.Step(name="mystery"), END))
    assert "steps[1].step_type" in v


def test_a_step_type_the_contract_does_not_define_is_named_unknown_not_missing(
    client: Client,
) -> None:
    v = violations(client, *linear(START, pb.Step(name="mystery", step_type=99), END))  # type: ignore[arg-type]
    assert v["steps[1].step_type"] == "unknown StepType value 99"


def test_llm_step_needs_a_prompt(client: Client) -> None:
    v = violations(client, *linear(START, step("llm", "LLM"), END))
    assert "steps[1].prompt_template" in v


def test_start_step_has_no_prompt(client: Client) -> None:
    v = violations(client, *linear(step("start", "START", "hi"), LLM, END))
    assert "steps[0].prompt_template" in v


def test_prompt_type_must_be_text_or_chat(client: Client) -> None:
    bad = step("llm", "LLM")
    bad.prompt_template.CopyFrom(pb.PromptTemplate(type="markdown", text="x"))
    v = violations(client, *linear(START, bad, END))
    assert "steps[1].prompt_template.type" in v


def test_chat_template_roles_are_checked(client: Client) -> None:
    chat = step("llm", "LLM")
    chat.prompt_template.CopyFrom(
        pb.PromptTemplate(
            type="chat",
            messages=[
                pb.ChatMessageTemplate(role="user", content="ok"),
                pb.ChatMessageTemplate(role="robot", content="no"),
            ],
        )
    )
    v = violations(client, *linear(START, chat, END))
    assert "steps[1].prompt_template.messages[1].role" in v


def test_malformed_template_points_at_its_field(client: Client) -> None:
    v = violations(client, *linear(START, step("llm", "LLM", "Hi ${inputs.name"), END))
    assert "unclosed" in v["steps[1].prompt_template.text"]


def test_nested_template_injection_is_refused(client: Client) -> None:
    v = violations(client, *linear(START, step("llm", "LLM", "${${x}}"), END))
    assert "steps[1].prompt_template.text" in v


def test_template_field_other_than_result_or_user_input(client: Client) -> None:
    v = violations(client, *linear(START, step("llm", "LLM", "${start.prompt}"), END))
    assert "steps[1].prompt_template.text" in v


def test_reference_to_unknown_step(client: Client) -> None:
    v = violations(client, *linear(START, step("llm", "LLM", "Use ${ghost.result}"), END))
    assert "ghost" in v["steps[1].prompt_template.text"]


def test_reference_in_chat_message_to_unknown_step(client: Client) -> None:
    chat = step("llm", "LLM")
    chat.prompt_template.CopyFrom(
        pb.PromptTemplate(
            type="chat", messages=[pb.ChatMessageTemplate(role="user", content="${ghost.result}")]
        )
    )
    v = violations(client, *linear(START, chat, END))
    assert "steps[1].prompt_template.messages[0].content" in v


def test_user_input_of_a_non_input_step(client: Client) -> None:
    v = violations(client, *linear(START, LLM, step("end", "END", "${llm.user_input}")))
    assert "steps[2].prompt_template.text" in v


def test_overlong_template(client: Client) -> None:
    v = violations(client, *linear(START, step("llm", "LLM", "x" * 40_000), END))
    assert "steps[1].prompt_template.text" in v


def test_too_many_steps(client: Client) -> None:
    many = [START] + [step(f"s{i}", "LLM", "x") for i in range(600)] + [END]
    v = violations(client, *linear(*many))
    assert "steps" in v


def test_transition_to_unknown_step(client: Client) -> None:
    v = violations(client, [START, LLM, END], [edge("start", "llm"), edge("llm", "nowhere")])
    assert "step_transitions[1].target" in v


def test_transition_by_unknown_id(client: Client) -> None:
    v = violations(
        client,
        [START, LLM, END],
        [
            edge("start", "llm"),
            edge("llm", "end"),
            pb.StepTransition(source_step_id="missing", target="end"),
        ],
    )
    assert "step_transitions[2].source_step_id" in v


def test_transition_without_ends(client: Client) -> None:
    v = violations(
        client, [START, LLM, END], [edge("start", "llm"), edge("llm", "end"), pb.StepTransition()]
    )
    assert "step_transitions[2].source" in v


def test_transition_id_and_name_that_disagree(client: Client) -> None:
    start = step("start", "START")
    start.id = "s0"
    v = violations(
        client,
        [start, LLM, END],
        [pb.StepTransition(source_step_id="s0", source="llm", target="llm"), edge("llm", "end")],
    )
    assert "step_transitions[0].source" in v


def test_two_unlabelled_transitions_out_of_one_step(client: Client) -> None:
    other = step("other", "LLM", "x")
    v = violations(
        client,
        [START, LLM, other, END],
        [edge("start", "llm"), edge("start", "other"), edge("llm", "end"), edge("other", "end")],
    )
    assert "unlabelled" in v["step_transitions[1].label"]


def test_duplicate_labels_out_of_one_step(client: Client) -> None:
    cond = step("cond", "CONDITION", "${inputs.x}")
    a, b = step("a", "END", "a"), step("b", "END", "b")
    v = violations(
        client,
        [START, cond, a, b],
        [edge("start", "cond"), edge("cond", "a", "yes"), edge("cond", "b", "yes")],
    )
    assert "step_transitions[2].label" in v


def test_labels_only_on_routing_steps(client: Client) -> None:
    v = violations(client, [START, LLM, END], [edge("start", "llm", "go"), edge("llm", "end")])
    assert "step_transitions[0].label" in v


def test_end_step_has_no_outgoing_transitions(client: Client) -> None:
    v = violations(
        client, [START, LLM, END], [edge("start", "llm"), edge("llm", "end"), edge("end", "llm")]
    )
    assert "step_transitions[2].source" in v


def test_nothing_leads_back_into_start(client: Client) -> None:
    cond = step("cond", "CONDITION", "${inputs.x}")
    v = violations(
        client,
        [START, cond, END],
        [edge("start", "cond"), edge("cond", "end"), edge("cond", "start", "again")],
    )
    assert "step_transitions[2].target" in v


def test_unreachable_step(client: Client) -> None:
    island = step("island", "LLM", "x")
    v = violations(
        client,
        [START, LLM, END, island],
        [edge("start", "llm"), edge("llm", "end"), edge("island", "end")],
    )
    assert "not reachable" in v["steps[3]"]


def test_loop_with_an_exit_is_accepted(client: Client) -> None:
    check, retry = step("check", "CONDITION", "${retry.result}"), step("retry", "LLM", "again")
    graph = (
        [START, retry, check, step("end", "END", "${retry.result}")],
        [
            edge("start", "retry"),
            edge("retry", "check"),
            edge("check", "retry", "again"),
            edge("check", "end"),
        ],
    )
    assert client.flows.CreateLiveFlow(create_request(graph=graph)).current_version.version == 1


def test_cycle_without_exit_cannot_reach_end(client: Client) -> None:
    a, b = step("a", "LLM", "x"), step("b", "LLM", "y")
    v = violations(client, [START, a, b, END], [edge("start", "a"), edge("a", "b"), edge("b", "a")])
    assert "cannot reach an END" in v["steps[1]"]


def test_llm_settings_out_of_range(client: Client) -> None:
    bad = step("llm", "LLM", "x", llm=pb.LlmConfig(temperature=3.5, max_tokens=0, model="no-slash"))
    v = violations(client, *linear(START, bad, END))
    assert {"steps[1].llm.temperature", "steps[1].llm.max_tokens", "steps[1].llm.model"} <= set(v)


def test_model_settings_only_on_llm_steps(client: Client) -> None:
    bad = step("ask", "INPUT", "Name?", llm=pb.LlmConfig(model="builtin/echo"))
    v = violations(client, *linear(START, bad, END))
    assert "steps[1].llm" in v


def test_http_step_needs_a_url(client: Client) -> None:
    v = violations(client, *linear(START, step("call", "HTTP"), END))
    assert "steps[1].http" in v


def test_http_method_is_checked(client: Client) -> None:
    bad = step("call", "HTTP", http=pb.HttpConfig(url="http://x/", method="TELEPORT"))
    v = violations(client, *linear(START, bad, END))
    assert "steps[1].http.method" in v


def test_start_inputs_must_be_unique_identifiers(client: Client) -> None:
    start = step(
        "start",
        "START",
        start=pb.StartConfig(
            inputs=[pb.FlowInput(name="q"), pb.FlowInput(name="q"), pb.FlowInput(name="1x")]
        ),
    )
    v = violations(client, *linear(start, LLM, END))
    assert {"steps[0].start.inputs[1].name", "steps[0].start.inputs[2].name"} <= set(v)


def test_every_problem_is_reported_at_once(client: Client) -> None:
    v = violations(
        client, *linear(step("bad name", "LLM", "${ghost.result}"), step("", "LLM", "x"))
    )
    assert {"steps[0].name", "steps[1].name", "steps[0].prompt_template.text", "steps"} <= set(v)


def test_refused_graph_leaves_no_flow_behind(client: Client) -> None:
    before = client.flows.ListLiveFlows(svc.ListLiveFlowsRequest(page_size=100))
    violations(client, *linear(LLM, END))
    after = client.flows.ListLiveFlows(svc.ListLiveFlowsRequest(page_size=100))
    assert [f.id for f in after.live_flows] == [f.id for f in before.live_flows]
