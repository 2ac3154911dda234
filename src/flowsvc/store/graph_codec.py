"""A flow version's graph as the JSON document the store keeps (versions are immutable)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flowsvc.domain.model import (
    ChatMessageTemplate,
    FlowInput,
    Graph,
    HttpConfig,
    LlmConfig,
    PromptTemplate,
    StartConfig,
    Step,
    StepType,
    Transition,
)


def graph_to_json(graph: Graph) -> dict[str, Any]:
    return asdict(graph)


def _step(data: dict[str, Any]) -> Step:
    prompt = data.get("prompt_template")
    start = data.get("start")
    llm = data.get("llm")
    http = data.get("http")
    return Step(
        id=data["id"],
        name=data["name"],
        step_type=StepType(data["step_type"]),
        prompt_template=None
        if prompt is None
        else PromptTemplate(
            type=prompt["type"],
            text=prompt["text"],
            messages=tuple(ChatMessageTemplate(**m) for m in prompt["messages"]),
        ),
        start=None
        if start is None
        else StartConfig(inputs=tuple(FlowInput(**i) for i in start["inputs"])),
        llm=None if llm is None else LlmConfig(**llm),
        http=None
        if http is None
        else HttpConfig(**{**http, "headers": tuple((k, v) for k, v in http["headers"])}),
    )


def graph_from_json(data: dict[str, Any]) -> Graph:
    return Graph(
        steps=tuple(_step(s) for s in data["steps"]),
        transitions=tuple(Transition(**t) for t in data["transitions"]),
    )
