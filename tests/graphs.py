"""Graph builders for tests."""

from __future__ import annotations

import itertools
from typing import Any

from google.protobuf import json_format

from flowsvc.v1 import live_flow_service_pb2 as svc
from flowsvc.v1 import resources_pb2 as pb

TYPES = {
    "START": pb.STEP_TYPE_START,
    "LLM": pb.STEP_TYPE_LLM,
    "INPUT": pb.STEP_TYPE_INPUT,
    "CONDITION": pb.STEP_TYPE_CONDITION,
    "HTTP": pb.STEP_TYPE_HTTP,
    "END": pb.STEP_TYPE_END,
}


def step(name: str, kind: str, text: str | None = None, **config: Any) -> pb.Step:
    s = pb.Step(name=name, step_type=TYPES[kind])
    if text is not None:
        s.prompt_template.CopyFrom(pb.PromptTemplate(type="text", text=text))
    for key, value in config.items():
        getattr(s, key).CopyFrom(value)
    return s


def edge(source: str, target: str, label: str = "") -> pb.StepTransition:
    return pb.StepTransition(source=source, target=target, label=label)


def linear(*steps: pb.Step) -> tuple[list[pb.Step], list[pb.StepTransition]]:
    return list(steps), [edge(a.name, b.name) for a, b in itertools.pairwise(steps)]


def chain5() -> tuple[list[pb.Step], list[pb.StepTransition]]:
    """The reference flow of BENCHMARKS.md."""
    return linear(
        step(
            "start",
            "START",
            start=pb.StartConfig(inputs=[pb.FlowInput(name="question", required=True)]),
        ),
        step("draft", "LLM", "Answer briefly: ${inputs.question}"),
        step("critique", "LLM", "Critique: ${draft.result}"),
        step("final", "LLM", "Improve: ${draft.result} | ${critique.result}"),
        step("end", "END", "${final.result}"),
    )


def create_request(
    name: str = "flow", graph: Any = None, **fields: Any
) -> svc.CreateLiveFlowRequest:
    steps, transitions = graph if graph is not None else chain5()
    return svc.CreateLiveFlowRequest(name=name, steps=steps, step_transitions=transitions, **fields)


def from_json(path: Any, message: Any) -> Any:
    return json_format.Parse(open(path).read(), message)


def struct(**values: Any) -> Any:
    from google.protobuf import struct_pb2

    s = struct_pb2.Struct()
    s.update(values)
    return s


def with_input() -> tuple[list[pb.Step], list[pb.StepTransition]]:
    """START -> ask (INPUT) -> answer (LLM) -> END."""
    return linear(
        step(
            "start",
            "START",
            start=pb.StartConfig(inputs=[pb.FlowInput(name="topic", required=True)]),
        ),
        step("ask", "INPUT", "What do you want to know about ${inputs.topic}?"),
        step("answer", "LLM", "Answer about ${inputs.topic}: ${ask.user_input}"),
        step("end", "END", "${answer.result}"),
    )


def router(kind: str = "CONDITION") -> tuple[list[pb.Step], list[pb.StepTransition]]:
    """Routes on ${inputs.choice}: 'yes' -> yes_end, 'no' -> no_end, anything else -> other_end."""
    return (
        [
            step("start", "START"),
            step("decide", kind, "${inputs.choice}"),
            step("yes_end", "END", "took yes"),
            step("no_end", "END", "took no"),
            step("other_end", "END", "took default"),
        ],
        [
            edge("start", "decide"),
            edge("decide", "yes_end", "yes"),
            edge("decide", "no_end", "no"),
            edge("decide", "other_end"),
        ],
    )


def long_chain(n: int) -> tuple[list[pb.Step], list[pb.StepTransition]]:
    steps = [step("start", "START")]
    prev = "start"
    for i in range(n):
        text = "${" + prev + ".result}." if i else "go"
        steps.append(step(f"s{i}", "LLM", text))
        prev = f"s{i}"
    steps.append(step("end", "END", "${" + prev + ".result}"))
    return linear(*steps)
