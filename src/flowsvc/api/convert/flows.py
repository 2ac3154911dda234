"""Flow definitions: steps, transitions, graphs and versions; timestamps."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from flowsvc.domain import model
from flowsvc.domain.errors import FieldViolation, InvalidArgument
from flowsvc.v1 import resources_pb2 as pb

_STEP_TYPE_TO_PB = {t: pb.StepType.Value(f"STEP_TYPE_{t.value}") for t in model.StepType}
_STEP_TYPE_FROM_PB = {v: k for k, v in _STEP_TYPE_TO_PB.items()}


_KNOWN_VALUES: dict[Any, frozenset[int]] = {}


def known_enum(value: int, enum: Any, field: str) -> int:
    """Proto3 enums are open: a number the contract does not define arrives as is. Refuse it
    rather than read it as the default, which would silently do something the caller did
    not ask for (no filter, the basic view, an evaluation mode that is none of them)."""
    if value not in _known_values(enum):
        raise InvalidArgument.one(field, _unknown(enum, value))
    return value


def _known_values(enum: Any) -> frozenset[int]:
    known = _KNOWN_VALUES.get(enum)
    if known is None:
        known = _KNOWN_VALUES[enum] = frozenset(enum.values())  # values() is a new list a call
    return known


def _unknown(enum: Any, value: int) -> str:
    return f"unknown {enum.DESCRIPTOR.name} value {value}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime | None) -> Timestamp | None:
    """What Timestamp.FromDatetime computes, without its pure-Python detour through a naive
    datetime (a response carries a dozen of these)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)


# -- requests -> domain ---------------------------------------------------------------


def step_from_pb(step: pb.Step) -> model.Step:
    prompt = None
    if step.HasField("prompt_template"):
        p = step.prompt_template
        prompt = model.PromptTemplate(
            type=p.type,
            text=p.text,
            messages=tuple(model.ChatMessageTemplate(m.role, m.content) for m in p.messages),
        )
    config = step.WhichOneof("config")
    start = llm = http = None
    if config == "start":
        start = model.StartConfig(
            inputs=tuple(
                model.FlowInput(i.name, i.required, i.description) for i in step.start.inputs
            )
        )
    elif config == "llm":
        c = step.llm
        llm = model.LlmConfig(
            model=c.model,
            temperature=c.temperature if c.HasField("temperature") else None,
            max_tokens=c.max_tokens if c.HasField("max_tokens") else None,
            system_prompt=c.system_prompt,
            include_history=c.include_history,
        )
    elif config == "http":
        h = step.http
        http = model.HttpConfig(
            method=h.method.upper(),
            url=h.url,
            headers=tuple(sorted(h.headers.items())),
            body=h.body,
            timeout_ms=h.timeout_ms,
        )
    return model.Step(
        id=step.id,
        name=step.name,
        step_type=_STEP_TYPE_FROM_PB.get(step.step_type),
        prompt_template=prompt,
        start=start,
        llm=llm,
        http=http,
    )


def transition_from_pb(t: pb.StepTransition) -> model.Transition:
    return model.Transition(
        id=t.id,
        source_step_id=t.source_step_id,
        target_step_id=t.target_step_id,
        label=t.label,
        source=t.source,
        target=t.target,
    )


def graph_from_pb(
    steps: Iterable[pb.Step], transitions: Iterable[pb.StepTransition]
) -> tuple[list[model.Step], list[model.Transition]]:
    steps = list(steps)
    # known_enum's rule, for every step at once rather than the first only.
    known = _known_values(pb.StepType)
    unknown = [
        FieldViolation(f"steps[{i}].step_type", _unknown(pb.StepType, s.step_type))
        for i, s in enumerate(steps)
        if s.step_type not in known
    ]
    if unknown:
        raise InvalidArgument(unknown)
    return [step_from_pb(s) for s in steps], [transition_from_pb(t) for t in transitions]


# -- domain -> responses --------------------------------------------------------------


# A step definition's pb without its timestamps, by (version id, step id): a version is
# immutable, so its steps are converted once, not once per session step of every response.
# Each entry keeps the step it was made from and is used only for an equal step, so a key
# that is not unique (a step without an id) costs a conversion, never a wrong answer.
_DEFINITIONS: dict[tuple[str, str], tuple[model.Step, pb.Step]] = {}
DEFINITIONS_KEPT = 4096  # steps; past this the cache starts again empty


def step_to_pb(step: model.Step, created_at: datetime, version_id: str = "") -> pb.Step:
    return step_pb_at(step, timestamp(created_at), version_id)


def step_pb_at(step: model.Step, stamp: Timestamp | None, version_id: str) -> pb.Step:
    """The step's pb with `stamp` as both its times (what a session step shows of it)."""
    out = pb.Step(created_at=stamp, updated_at=stamp)
    out.MergeFrom(definition_pb(step, version_id))
    return out


def definition_pb(step: model.Step, version_id: str) -> pb.Step:
    """The step's pb without times, shared: never to be changed (MergeFrom it)."""
    key = (version_id, step.id)
    kept = _DEFINITIONS.get(key)
    if kept is not None and (kept[0] is step or kept[0] == step):
        return kept[1]
    out = _definition(step)
    if len(_DEFINITIONS) >= DEFINITIONS_KEPT:
        _DEFINITIONS.clear()
    _DEFINITIONS[key] = (step, out)
    return out


def _definition(step: model.Step) -> pb.Step:
    out = pb.Step(
        id=step.id,
        name=step.name,
        step_type=_STEP_TYPE_TO_PB[step.step_type] if step.step_type else pb.STEP_TYPE_UNSPECIFIED,
    )
    if step.prompt_template is not None:
        p = step.prompt_template
        out.prompt_template.CopyFrom(
            pb.PromptTemplate(
                type=p.type,
                text=p.text,
                messages=[
                    pb.ChatMessageTemplate(role=m.role, content=m.content) for m in p.messages
                ],
            )
        )
    if step.start is not None:
        out.start.CopyFrom(
            pb.StartConfig(
                inputs=[
                    pb.FlowInput(name=i.name, required=i.required, description=i.description)
                    for i in step.start.inputs
                ]
            )
        )
    if step.llm is not None:
        c = step.llm
        out.llm.CopyFrom(
            pb.LlmConfig(
                model=c.model,
                temperature=c.temperature,
                max_tokens=c.max_tokens,
                system_prompt=c.system_prompt,
                include_history=c.include_history,
            )
        )
    if step.http is not None:
        h = step.http
        out.http.CopyFrom(
            pb.HttpConfig(
                method=h.method,
                url=h.url,
                headers=dict(h.headers),
                body=h.body,
                timeout_ms=h.timeout_ms,
            )
        )
    return out


def version_to_pb(version: model.FlowVersion) -> pb.FlowVersion:
    created = timestamp(version.created_at)
    out = pb.FlowVersion(
        id=version.id,
        flow_id=version.flow_id,
        version=version.version,
        step_transitions=[
            pb.StepTransition(
                id=t.id,
                source_step_id=t.source_step_id,
                target_step_id=t.target_step_id,
                label=t.label,
                source=t.source,
                target=t.target,
            )
            for t in version.graph.transitions
        ],
        created_at=created,
        updated_at=created,
    )
    # Each step built in place (the definition merged in where it lies): as many copies of an
    # HTTP step's headers map as before, so they go out in the same order (see records).
    add = out.steps.add
    for step in version.graph.steps:
        add(created_at=created, updated_at=created).MergeFrom(definition_pb(step, version.id))
    return out
