"""Graph builders for tests."""

from __future__ import annotations

import itertools
from typing import Any

from flowsvc.v1 import live_flow_service_pb2 as svc
from flowsvc.v1 import resources_pb2 as pb
from google.protobuf import json_format

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
