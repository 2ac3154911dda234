"""What a run request carries and the checks it must pass before anything runs: options,
a new session's fields, overrides, inputs, JSON sizes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from flowsvc.domain.errors import (
    FieldViolation,
)
from flowsvc.domain.limits import Limits
from flowsvc.domain.model import FlowVersion, StepType
from flowsvc.domain.runs import (
    Customer,
    FlowRun,
    Message,
    Session,
)

OVERRIDABLE = {
    "model": str,
    "temperature": float,
    "max_tokens": int,
    "system_prompt": str,
    "include_history": bool,
}
DEFAULT_EXPIRATION = 86_400
MIN_EXPIRATION, MAX_EXPIRATION = 60, 2_592_000


class MultitaskStrategy(StrEnum):
    """What a run sent to a session that is running another run does."""

    ENQUEUE = "ENQUEUE"  # wait for the runs before it, in order
    REJECT = "REJECT"  # ABORTED (what no_wait does)
    INTERRUPT = "INTERRUPT"  # cancel the runs going (their steps stay), then run
    ROLLBACK = "ROLLBACK"  # cancel them and remove their steps and costs, then run


@dataclass
class RunOptions:
    session_id: str = ""
    version: int = 0
    override: dict[str, Any] = field(default_factory=dict)
    eval_options: dict[str, Any] = field(default_factory=dict)
    no_wait: bool = False
    multitask: MultitaskStrategy = MultitaskStrategy.ENQUEUE
    # A one-off callback on the run's end (checked against the allow-list by the API).
    webhook_url: str = ""
    # Set by schedules only: the schedule and tick the run is for.
    schedule_id: str = ""
    scheduled_time: datetime | None = None


@dataclass
class NewSession:
    name: str = ""
    expiration_seconds: int | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)
    customer: Customer | None = None
    request_id: str = ""


@dataclass
class Started:
    run: FlowRun
    session: Session
    # The session's last seq before this run: its events come after it.
    after_seq: int
    existing: bool = False
    committed: asyncio.Future[None] | None = None


def _is_kind(value: Any, kind: type) -> bool:
    """JSON numbers arrive as floats: an int property takes a whole number."""
    if kind is bool or kind is str:
        return isinstance(value, kind)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return kind is float or float(value).is_integer()


def check_overrides(
    override: Mapping[str, Any], version: FlowVersion, field_name: str
) -> list[FieldViolation]:
    steps = {s.name: s for s in version.graph.steps}
    problems = []
    for key, value in override.items():
        at = f"{field_name}[{key!r}]"
        step_name, _, prop = key.partition(".")
        step = steps.get(step_name)
        if step is None:
            problems.append(
                FieldViolation(at, f"no step {step_name!r} in version {version.version}")
            )
            continue
        if step.step_type not in (StepType.LLM, StepType.CONDITION):
            problems.append(FieldViolation(at, f"step {step_name!r} is not an LLM step"))
            continue
        kind = OVERRIDABLE.get(prop)
        if kind is None:
            problems.append(
                FieldViolation(at, f"unknown property {prop!r}; one of {', '.join(OVERRIDABLE)}")
            )
            continue
        if not _is_kind(value, kind):
            problems.append(FieldViolation(at, f"must be {kind.__name__}"))
        elif prop == "temperature" and not 0 <= value <= 2:
            problems.append(FieldViolation(at, "must be between 0 and 2"))
        elif prop == "max_tokens" and not 1 <= value <= 1_000_000:
            problems.append(FieldViolation(at, "must be between 1 and 1000000"))
    return problems


_fast_json: Callable[[Any], bytes] | None
try:  # a server dependency; the client-only install (CLI, client) measures with json
    from orjson import dumps as _fast_json
except ModuleNotFoundError:  # exercised by the client-only test (tests/test_client.py)
    _fast_json = None


def json_size(value: Any) -> int:
    """Bytes of the value as compact UTF-8 JSON. orjson writes the same text several times
    faster (every run's body is measured); what it refuses (integers past 64 bits, non-string
    keys) is measured the slow way."""
    if _fast_json is not None:
        try:
            return len(_fast_json(value))
        except TypeError:
            pass
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def check_json_size(value: Any, field_name: str, limits: Limits) -> list[FieldViolation]:
    size = json_size(value)
    if size > limits.max_json_bytes:
        return [
            FieldViolation(field_name, f"at most {limits.max_json_bytes} bytes as JSON; got {size}")
        ]
    return []


def check_inputs(
    body: Mapping[str, Any], version: FlowVersion, field_name: str
) -> list[FieldViolation]:
    start = next(s for s in version.graph.steps if s.step_type is StepType.START)
    declared = start.start.inputs if start.start is not None else ()
    return [
        FieldViolation(f"{field_name}.{i.name}", "required input missing")
        for i in declared
        if i.required and body.get(i.name) in (None, "")
    ]
