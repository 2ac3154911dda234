"""Events as run_events rows and back.

A row's payload holds what its event reports. Written now, as positional arrays (no field
name repeated in every row, encoded by orjson in one C call from the values the engine froze
at the moment of the event):
- {"s": [...]}: a step's values in STEP_FIELDS order, its Step definition as the step's id;
- {"r": [...]}: a run's values in RUN_FIELDS order, its messages in MESSAGE_FIELDS order and
  its steps as "s" arrays;
- {"eval_job": {...}}: an evaluation job by field name.
Rows written before hold {"step": {...}} and {"run": {..., "steps": [...]}} by field name; both
forms read to the same RunEvent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from flowsvc.domain.evals import EvalJob
from flowsvc.domain.model import Step
from flowsvc.domain.runs import (
    EventType,
    FlowRun,
    Message,
    RunEvent,
    RunStatus,
    SessionStep,
    StepStatus,
    run_values,
    step_values,
)
from flowsvc.store.run_codec import (
    StepLookup,
    eval_job_from,
    eval_job_json,
    run_from,
    step_from,
)

# The order of the stored arrays: the records' field order when they were written. A change of
# SessionStep, FlowRun or Message fields needs a new payload key, or old rows misread
# (tests/store/test_event_rows.py holds these to the records).
STEP_FIELDS = (
    "id", "session_id", "run_id", "organisation_id", "position", "flow_version_id", "step",
    "status", "created_at", "updated_at", "prompt", "result", "error", "user_input",
    "input_tokens", "output_tokens", "cost", "input_request_id",
)  # fmt: skip
RUN_FIELDS = (
    "id", "organisation_id", "flow_id", "session_id", "flow_version_id", "version", "body",
    "override", "status", "created_at", "updated_at", "user_message", "ai_message", "response",
    "error", "eval_job_id", "eval_options", "parent_run_id", "request_id", "request_digest",
    "trace_context", "cancel_requested", "start_time", "end_time", "duration_ms",
    "input_tokens", "output_tokens", "cost", "steps", "eval_job", "schedule_id",
    "scheduled_time", "webhook_url",
)  # fmt: skip
MESSAGE_FIELDS = ("id", "date", "role", "content", "run_id", "position")

_S_STEP = STEP_FIELDS.index("step")
_S_VERSION = STEP_FIELDS.index("flow_version_id")
_S_STATUS = STEP_FIELDS.index("status")
_S_TIMES = (STEP_FIELDS.index("created_at"), STEP_FIELDS.index("updated_at"))
_R_STATUS = RUN_FIELDS.index("status")
_R_STEPS = RUN_FIELDS.index("steps")
_R_MESSAGES = (RUN_FIELDS.index("user_message"), RUN_FIELDS.index("ai_message"))
_R_TIMES = tuple(
    RUN_FIELDS.index(f)
    for f in ("created_at", "updated_at", "start_time", "end_time", "scheduled_time")
)
# Not stored with a run (read back as before: not requested, no job).
_R_CANCEL = RUN_FIELDS.index("cancel_requested")
_R_EVAL_JOB = RUN_FIELDS.index("eval_job")
_R_WEBHOOK_URL = RUN_FIELDS.index("webhook_url")


def reference(value: Any) -> Any:
    """What the arrays hold of a record orjson does not encode itself: a step's definition as
    its id (its flow version keeps it); a run's finished evaluation job not at all."""
    if isinstance(value, Step):
        return value.id
    if isinstance(value, EvalJob):
        return None
    raise TypeError(f"an event payload cannot hold {type(value).__name__}")


def payload_text(payload: Any) -> str:
    """A payload as the JSON text of its column, in one orjson call (the writer's bind)."""
    return orjson.dumps(
        payload, default=reference, option=orjson.OPT_PASSTHROUGH_DATACLASS
    ).decode()


def event_row(e: RunEvent) -> dict[str, Any]:
    """The event's row; its payload still as values (payload_text encodes them). The run's
    callback URL rides along for the webhook outbox (not a column)."""
    payload: dict[str, Any] = {}
    if e.eval_job is not None:
        payload["eval_job"] = eval_job_json(e.eval_job)
    values = e.step_values
    if values is None and e.step is not None:
        values = step_values(e.step)
    if values is not None:
        payload["s"] = values
    run = e.run_values
    if run is None and e.run is not None:
        run = run_values(e.run)
    if run is not None:
        payload["r"] = run
    return {
        "session_id": e.session_id,
        "seq": e.seq,
        "run_id": e.run_id,
        "organisation_id": e.organisation_id,
        "type": e.type.value,
        "time": e.time,
        "payload": payload,
        "webhook_url": "" if run is None else run[_R_WEBHOOK_URL],
    }


def event_from(r: Any, lookup: StepLookup) -> RunEvent:
    payload = r.payload
    step: SessionStep | None = None
    run: FlowRun | None = None
    if "s" in payload:
        step = _step_from_values(payload["s"], lookup)
    elif "step" in payload:
        step = _step_from_payload(payload["step"], lookup)
    if "r" in payload:
        run = _run_from_values(payload["r"], lookup)
    elif "run" in payload:
        run = _run_from_payload(payload["run"], lookup)
    job = payload.get("eval_job")
    return RunEvent(
        eval_job=None if job is None else eval_job_from(job),
        seq=r.seq,
        session_id=r.session_id,
        run_id=r.run_id,
        organisation_id=r.organisation_id,
        type=EventType(r.type),
        time=r.time,
        step=step,
        run=run,
        session_step_id="" if step is None else step.id,
    )


def version_ids_in(payload: dict[str, Any]) -> set[str]:
    """The flow versions whose step definitions reading the payload looks up."""
    ids = set()
    if "s" in payload:
        ids.add(payload["s"][_S_VERSION])
    if "r" in payload:
        ids.update(s[_S_VERSION] for s in payload["r"][_R_STEPS])
    if "step" in payload:
        ids.add(payload["step"]["flow_version_id"])
    if "run" in payload:
        ids.update(s["flow_version_id"] for s in payload["run"]["steps"])
    return ids


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _step_from_values(stored: list[Any], lookup: StepLookup) -> SessionStep:
    values = list(stored)
    values[_S_STEP] = lookup(values[_S_VERSION], values[_S_STEP])
    values[_S_STATUS] = StepStatus(values[_S_STATUS])
    for i in _S_TIMES:
        values[i] = datetime.fromisoformat(values[i])
    return SessionStep(*values)


def _run_from_values(stored: list[Any], lookup: StepLookup) -> FlowRun:
    values = list(stored)
    values[_R_STATUS] = RunStatus(values[_R_STATUS])
    for i in _R_TIMES:
        values[i] = _when(values[i])
    for i in _R_MESSAGES:
        m = values[i]
        values[i] = None if m is None else Message(m[0], datetime.fromisoformat(m[1]), m[2], m[3])
    values[_R_CANCEL] = False
    values[_R_EVAL_JOB] = None
    values[_R_STEPS] = [_step_from_values(s, lookup) for s in values[_R_STEPS]]
    return FlowRun(*values)


class _Attrs:
    """Lets a JSON dict stand where a row is read by attribute."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(data)


def _step_from_payload(d: dict[str, Any], lookup: StepLookup) -> SessionStep:
    data = dict(d)
    data["created_at"] = _when(d["created_at"])
    data["updated_at"] = _when(d["updated_at"])
    return step_from(_Attrs(data), lookup)


def _run_from_payload(d: dict[str, Any], lookup: StepLookup) -> FlowRun:
    data = dict(d)
    for key in ("start_time", "end_time", "created_at", "updated_at", "scheduled_time"):
        data[key] = _when(d.get(key))
    run = run_from(_Attrs(data))
    run.steps = [_step_from_payload(s, lookup) for s in d["steps"]]
    return run
