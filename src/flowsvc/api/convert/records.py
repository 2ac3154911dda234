"""Live flows (with their sessions), sessions, runs, events and evaluation jobs."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from flowsvc.api.convert.flows import (
    definition_pb,
    known_enum,
    step_pb_at,
    timestamp,
    version_to_pb,
)
from flowsvc.domain import evals, model, runs
from flowsvc.domain.errors import InvalidArgument
from flowsvc.domain.ids import new_id
from flowsvc.domain.run_requests import MultitaskStrategy, RunOptions
from flowsvc.v1 import resources_pb2 as pb

# -- sessions, runs and events ---------------------------------------------------------


def _enum_map(enum_type: Any, proto_enum: Any, prefix: str) -> dict[Any, int]:
    return {member: proto_enum.Value(f"{prefix}_{member.value}") for member in enum_type}


_SESSION_STATUS = _enum_map(runs.SessionStatus, pb.SessionStatus, "SESSION_STATUS")
_SESSION_STATUS_FROM_PB = {v: k for k, v in _SESSION_STATUS.items()}
_STEP_STATUS = _enum_map(runs.StepStatus, pb.StepStatus, "STEP_STATUS")
_RUN_STATUS = _enum_map(runs.RunStatus, pb.RunStatus, "RUN_STATUS")
_EVENT_TYPE = _enum_map(runs.EventType, pb.RunEventType, "RUN_EVENT_TYPE")


def session_status_from_pb(value: int, field: str) -> str:
    """ "" for UNSPECIFIED (no filter)."""
    status = _SESSION_STATUS_FROM_PB.get(known_enum(value, pb.SessionStatus, field))
    return "" if status is None else status.value


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    """What json_format.MessageToDict answers (and raises, for a NaN or infinite number),
    without its pure-Python printer: a body or override arrives with every run."""
    return {key: _value(item) for key, item in value.fields.items()}


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if number - number != 0.0:  # NaN or infinite: MessageToDict's own error
            return json_format.MessageToDict(value)
        return number
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value(item) for item in value.list_value.values]
    if kind == "bool_value":
        return value.bool_value
    return None  # null_value, or no kind at all


def dict_to_struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if value is None:
        return None
    out = struct_pb2.Struct()
    out.update(value)
    return out


def datetime_from_pb(value: Timestamp, field: str) -> datetime:
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise InvalidArgument.one(field, f"not a valid timestamp: {exc}") from None


def message_from_pb(m: pb.Message, field: str) -> runs.Message:
    date = datetime_from_pb(m.date, f"{field}.date") if m.HasField("date") else datetime.now(UTC)
    return runs.Message(id=m.id or new_id(), date=date, role=m.role, content=m.content)


def customer_from_pb(c: pb.Customer) -> runs.Customer:
    return runs.Customer(
        customer_id=c.customer_id, name=c.name, email=c.email, phone_number=c.phone_number
    )


def run_options_from_pb(o: pb.RunOptions) -> RunOptions:
    known_enum(o.eval_options.run_mode, pb.EvalRunMode, "options.eval_options.run_mode")
    return RunOptions(
        session_id=o.session_id,
        version=o.version,
        override=struct_to_dict(o.override),
        # Nothing to print for options left out (most calls): MessageToDict would answer {}.
        eval_options=json_format.MessageToDict(o.eval_options, preserving_proto_field_name=True)
        if o.HasField("eval_options")
        else {},
        no_wait=o.no_wait,
        multitask=_multitask(o),
        webhook_url=o.webhook_url,
    )


def _multitask(o: pb.RunOptions) -> MultitaskStrategy:
    known_enum(o.multitask_strategy, pb.MultitaskStrategy, "options.multitask_strategy")
    if o.multitask_strategy == pb.MULTITASK_STRATEGY_UNSPECIFIED:
        return MultitaskStrategy.REJECT if o.no_wait else MultitaskStrategy.ENQUEUE
    strategy = MultitaskStrategy(
        pb.MultitaskStrategy.Name(o.multitask_strategy).removeprefix("MULTITASK_STRATEGY_")
    )
    if o.no_wait and strategy is not MultitaskStrategy.REJECT:
        raise InvalidArgument.one(
            "options.no_wait", f"contradicts multitask_strategy {strategy.value}"
        )
    return strategy


def message_to_pb(
    m: runs.Message | None, steps: list[runs.SessionStep] | None = None
) -> pb.Message | None:
    if m is None:
        return None
    out = pb.Message(id=m.id, date=timestamp(m.date), role=m.role, content=m.content)
    if steps:
        add = out.steps.add  # each step built in place: not built, then copied in
        for s in steps:
            _session_step(add, s, in_list=True)
    return out


def session_step_to_pb(s: runs.SessionStep) -> pb.SessionStep:
    return _session_step(pb.SessionStep, s)


def _session_step(
    make: Callable[..., pb.SessionStep], s: runs.SessionStep, in_list: bool = False
) -> pb.SessionStep:
    """`make` (the message class, or a repeated field's `add`) called with the step's fields;
    its definition is merged in afterwards, where it lies, rather than built and copied."""
    created = timestamp(s.created_at)
    http = s.step.http
    # A map's entries go out in the order of its hash table, which each copy can reorder
    # (protobuf maps have no order to rely on, but the responses stay byte for byte what they
    # were): in a message's list, a step with several HTTP headers is built and then copied
    # in, as many copies as before; alone, merging the definition in is as many.
    copied = (
        {"step": step_pb_at(s.step, created, s.flow_version_id)}
        if in_list and http is not None and len(http.headers) > 1
        else None
    )
    out = make(
        id=s.id,
        run_id=s.run_id,
        status=_STEP_STATUS[s.status],
        prompt=s.prompt,
        result=s.result,
        error=s.error,
        user_input=s.user_input,
        input_tokens=s.input_tokens,
        output_tokens=s.output_tokens,
        cost=s.cost,
        created_at=created,
        updated_at=created if s.updated_at == s.created_at else timestamp(s.updated_at),
        **(copied or {}),
    )
    if copied is not None:
        return out
    step = out.step
    step.MergeFrom(definition_pb(s.step, s.flow_version_id))
    if created is None:
        step.SetInParent()
    else:  # the definition shows the session step's creation as its times
        step.created_at.CopyFrom(created)
        step.updated_at.CopyFrom(created)
    return out


def session_to_pb(
    s: runs.Session,
    steps: list[runs.SessionStep] | None = None,
    version: model.FlowVersion | None = None,
) -> pb.Session:
    out = pb.Session(
        id=s.id,
        organisation_id=s.organisation_id,
        live_flow_id=s.live_flow_id,
        name=s.name,
        status=_SESSION_STATUS[s.status],  # type: ignore[arg-type]
        inputs=dict_to_struct(s.inputs),
        variables=dict_to_struct(s.variables),
        messages=[
            pb.Message(id=m.id, date=timestamp(m.date), role=m.role, content=m.content)
            for m in s.messages or ()  # read with the session by every caller of this
        ],
        expiration_seconds=s.expiration_seconds,
        expires_at=timestamp(s.expires_at),
        steps_count=s.steps_count,
        error=s.error,
        cost=s.cost,
        costs=[
            pb.Cost(
                type=c.type,
                name=c.name,
                input_tokens=c.input_tokens,
                output_tokens=c.output_tokens,
                cost=c.cost,
            )
            for c in s.costs
        ],
        artifact=dict_to_struct(s.artifact),
        created_at=timestamp(s.created_at),
        updated_at=timestamp(s.updated_at),
        parent_session_id=s.parent_session_id,
        forked_from_step_id=s.forked_from_step_id,
    )
    if s.customer is not None:
        c = s.customer
        out.customer.CopyFrom(
            pb.Customer(
                customer_id=c.customer_id, name=c.name, email=c.email, phone_number=c.phone_number
            )
        )
    if version is not None:
        out.flow_version.CopyFrom(version_to_pb(version))
    if steps:
        out.steps.extend(session_step_to_pb(step) for step in steps)
        current = next((x for x in steps if x.id == s.current_step_id), steps[-1])
        out.current_step.CopyFrom(session_step_to_pb(current))
    return out


def run_to_pb(r: runs.FlowRun) -> pb.FlowRun:
    out = pb.FlowRun(
        id=r.id,
        flow_id=r.flow_id,
        session_id=r.session_id,
        version=r.version,
        body=dict_to_struct(r.body),
        override=dict_to_struct(r.override),
        status=_RUN_STATUS[r.status],  # type: ignore[arg-type]
        user_message=message_to_pb(r.user_message),
        ai_message=message_to_pb(
            r.ai_message or (runs.Message("", r.updated_at, "assistant", "") if r.steps else None),
            r.steps,
        ),
        response=r.response,
        error=r.error,
        eval_job_id=r.eval_job_id,
        start_time=timestamp(r.start_time),
        end_time=timestamp(r.end_time),
        duration_ms=r.duration_ms,
        created_at=timestamp(r.created_at),
        parent_run_id=r.parent_run_id,
        input_tokens=r.input_tokens,
        output_tokens=r.output_tokens,
        cost=r.cost,
        schedule_id=r.schedule_id,
        scheduled_time=timestamp(r.scheduled_time),
        webhook_url=r.webhook_url,
    )
    if r.eval_options:
        out.eval_options.MergeFromString(_eval_options_bytes(r.eval_options))
    if r.eval_job is not None:
        out.eval_job.CopyFrom(eval_job_to_pb(r.eval_job))
    return out


# A run's eval_options (a dict read from JSON) as EvalOptions bytes, by its JSON text: runs
# share a handful of them ({"runs": []} for most), and ParseDict is pure Python.
_EVAL_OPTIONS: dict[str, bytes] = {}
EVAL_OPTIONS_KEPT = 256


def _eval_options_bytes(options: dict[str, Any]) -> bytes:
    # The same text is the same dict to ParseDict: it tells 1 from 1.0 and true, and keeps
    # the order of every list.
    try:
        text = json.dumps(options, ensure_ascii=False)
    except (TypeError, ValueError):  # not JSON after all: ParseDict says what it says of it
        return json_format.ParseDict(options, pb.EvalOptions()).SerializeToString()
    raw = _EVAL_OPTIONS.get(text)
    if raw is None:
        raw = json_format.ParseDict(options, pb.EvalOptions()).SerializeToString()
        if len(_EVAL_OPTIONS) >= EVAL_OPTIONS_KEPT:
            _EVAL_OPTIONS.clear()
        _EVAL_OPTIONS[text] = raw
    return raw


_EVAL_STATUS = {
    s: pb.EvalJobStatus.Value(f"EVAL_JOB_STATUS_{s.value}") for s in evals.EvalJobStatus
}


def eval_job_to_pb(job: evals.EvalJob) -> pb.EvalJob:
    return pb.EvalJob(
        id=job.id,
        run_id=job.run_id,
        flow_id=job.flow_id,
        status=_EVAL_STATUS[job.status],
        results=[
            pb.EvalResult(
                flow_eval_id=r.flow_eval_id,
                eval_run_id=r.eval_run_id,
                score=r.score,
                passed=r.passed,
                output=r.output,
                error=r.error,
            )
            for r in job.results
        ],
        created_at=timestamp(job.created_at),
        finished_at=timestamp(job.finished_at),
    )


def event_to_pb(e: runs.RunEvent) -> pb.RunEvent:
    """Encoded once per event, however many subscribers it goes to."""
    if e.encoded is not None:
        return e.encoded  # type: ignore[no-any-return]
    out = pb.RunEvent(
        seq=e.seq,
        session_id=e.session_id,
        run_id=e.run_id,
        type=_EVENT_TYPE[e.type],  # type: ignore[arg-type]
        time=timestamp(e.time),
        session_step_id=e.session_step_id,
    )
    if e.step is not None:
        out.step.CopyFrom(session_step_to_pb(e.step))
    elif e.run is not None:
        out.run.CopyFrom(run_to_pb(e.run))
    elif e.eval_job is not None:
        out.eval_job.CopyFrom(eval_job_to_pb(e.eval_job))
    elif e.type is runs.EventType.STEP_DELTA:
        out.delta = e.delta
    e.encoded = out
    return out


def event_bytes(e: runs.RunEvent) -> bytes:
    """The serialized RunEvent, made once however many streams carry it."""
    if e.encoded_bytes is None:
        e.encoded_bytes = event_to_pb(e).SerializeToString()
    return e.encoded_bytes


def flow_to_pb(flow: model.LiveFlow) -> pb.LiveFlow:
    out = pb.LiveFlow(
        id=flow.id,
        organisation_id=flow.organisation_id,
        name=flow.name,
        description=flow.description,
        created_at=timestamp(flow.created_at),
        updated_at=timestamp(flow.updated_at),
        auto_eval_flow_ids=list(flow.auto_eval_flow_ids),
    )
    if flow.current_version is not None:
        out.current_version.CopyFrom(version_to_pb(flow.current_version))
    out.sessions.extend(session_to_pb(s) for s in flow.sessions if isinstance(s, runs.Session))
    return out
