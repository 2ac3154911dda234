"""Records of execution: sessions, their steps, runs and the events they emit."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from operator import attrgetter
from typing import Any

from flowsvc.domain.model import Step


class SessionStatus(StrEnum):
    NEW = "NEW"
    RUNNING = "RUNNING"
    WAITING_FOR_INPUT = "WAITING_FOR_INPUT"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


class StepStatus(StrEnum):
    NEW = "NEW"
    RUNNING = "RUNNING"
    WAITING_FOR_INPUT = "WAITING_FOR_INPUT"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"


class RunStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    WAITING_FOR_INPUT = "WAITING_FOR_INPUT"
    COMPLETE = "COMPLETE"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"

    @property
    def active(self) -> bool:
        return self in (RunStatus.QUEUED, RunStatus.RUNNING)

    @property
    def stopped(self) -> bool:
        """The run is not executing: finished, or paused for a person."""
        return not self.active


class EventType(StrEnum):
    RUN_STARTED = "RUN_STARTED"
    STEP_STARTED = "STEP_STARTED"
    STEP_DELTA = "STEP_DELTA"
    STEP_COMPLETED = "STEP_COMPLETED"
    STEP_FAILED = "STEP_FAILED"
    INPUT_REQUIRED = "INPUT_REQUIRED"
    RUN_COMPLETED = "RUN_COMPLETED"
    RUN_FAILED = "RUN_FAILED"
    RUN_CANCELLED = "RUN_CANCELLED"
    EVAL_COMPLETED = "EVAL_COMPLETED"
    RUN_ROLLED_BACK = "RUN_ROLLED_BACK"

    @property
    def ends_run_stream(self) -> bool:
        """A live run stream ends here: the run finished or now waits for a person."""
        return self in _RUN_STREAM_ENDS

    @property
    def ends_run(self) -> bool:
        return self in _RUN_ENDS


_RUN_ENDS = frozenset({EventType.RUN_COMPLETED, EventType.RUN_FAILED, EventType.RUN_CANCELLED})
_RUN_STREAM_ENDS = frozenset(
    {
        EventType.INPUT_REQUIRED,
        EventType.RUN_COMPLETED,
        EventType.RUN_FAILED,
        EventType.RUN_CANCELLED,
    }
)


@dataclass(slots=True)
class Message:
    id: str
    date: datetime
    role: str
    content: str
    # In a session's conversation: the run that added it ("" for messages the session was
    # created with) and its place in the conversation, from 1.
    run_id: str = ""
    position: int = 0


@dataclass(slots=True)
class Customer:
    customer_id: str = ""
    name: str = ""
    email: str = ""
    phone_number: str = ""


@dataclass(slots=True)
class Cost:
    type: str
    name: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0


@dataclass(slots=True)
class SessionStep:
    id: str
    session_id: str
    run_id: str
    organisation_id: str
    position: int  # execution order across every run of the session, from 1
    flow_version_id: str  # the version `step` is defined in
    step: Step
    status: StepStatus
    created_at: datetime
    updated_at: datetime
    prompt: str = ""
    result: str = ""
    error: str = ""
    user_input: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    input_request_id: str = ""

    def snapshot(self) -> SessionStep:
        return SessionStep(*_STEP_VALUES(self))


@dataclass(slots=True)
class Session:
    id: str
    organisation_id: str
    live_flow_id: str
    flow_version_id: str
    version: int
    name: str
    status: SessionStatus
    inputs: dict[str, Any]
    variables: dict[str, Any]
    # The conversation, oldest first; None when the session was read without it (the store
    # keeps messages in a table of their own, appended to: reading them costs a query that
    # grows with the conversation, so only the readers that show or use them ask for them).
    messages: list[Message] | None
    customer: Customer | None
    expiration_seconds: int
    expires_at: datetime
    created_at: datetime
    updated_at: datetime
    steps_count: int = 0
    current_step_id: str = ""
    error: str = ""
    cost: float = 0.0
    costs: list[Cost] = field(default_factory=list)
    artifact: dict[str, Any] | None = None
    request_id: str = ""
    last_seq: int = 0
    request_digest: str = ""
    # A session made by ForkSession: the session and the step of it this one was forked from.
    parent_session_id: str = ""
    forked_from_step_id: str = ""
    # How many messages the conversation holds, loaded or not (max_messages_per_session).
    message_count: int = 0


@dataclass(slots=True)
class FlowRun:
    id: str
    organisation_id: str
    flow_id: str
    session_id: str
    flow_version_id: str
    version: int
    body: dict[str, Any]
    override: dict[str, Any]
    status: RunStatus
    created_at: datetime
    updated_at: datetime
    user_message: Message | None = None
    ai_message: Message | None = None
    response: str = ""
    error: str = ""
    eval_job_id: str = ""
    eval_options: dict[str, Any] = field(default_factory=dict)
    parent_run_id: str = ""
    request_id: str = ""
    request_digest: str = ""
    # The W3C traceparent of the call that started the run: a resumed run links to it.
    trace_context: str = ""
    # Asked by a replica that does not run it; the owner cancels it (read, never written back).
    cancel_requested: bool = False
    start_time: datetime | None = None
    end_time: datetime | None = None
    duration_ms: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    # The steps this run took, in order (filled on reads and snapshots).
    steps: list[SessionStep] = field(default_factory=list)
    # The finished evaluation job, when an answer waits for it (not stored with the run).
    eval_job: Any = None
    # The schedule and tick that started the run; a one-off callback URL for its end.
    schedule_id: str = ""
    scheduled_time: datetime | None = None
    webhook_url: str = ""

    def snapshot(self) -> FlowRun:
        copy = FlowRun(*_RUN_VALUES(self))
        copy.steps = [s.snapshot() for s in self.steps]
        return copy


# A record's field values in field order, taken in one C call: an event freezes the step or
# run it reports this way (all values immutable but the messages and dicts, shared as a
# snapshot shares them), and the record is rebuilt with Class(*values) only if it is read.
_STEP_VALUES = attrgetter(*SessionStep.__slots__)
_RUN_VALUES = attrgetter(*FlowRun.__slots__)
_MESSAGE_VALUES = attrgetter(*Message.__slots__)
RUN_STEPS = FlowRun.__slots__.index("steps")
RUN_USER_MESSAGE = FlowRun.__slots__.index("user_message")
RUN_AI_MESSAGE = FlowRun.__slots__.index("ai_message")


def step_values(step: SessionStep) -> tuple[Any, ...]:
    """The step's values now, in SessionStep's field order."""
    return _STEP_VALUES(step)


def run_values(run: FlowRun) -> tuple[Any, ...]:
    """The run's values now, in FlowRun's field order; its steps and messages as values too
    (a run goes on changing its steps and may change its messages after the event)."""
    values = list(_RUN_VALUES(run))
    values[RUN_STEPS] = tuple(map(_STEP_VALUES, run.steps))
    for i in (RUN_USER_MESSAGE, RUN_AI_MESSAGE):
        if values[i] is not None:
            values[i] = _MESSAGE_VALUES(values[i])
    return tuple(values)


def run_of_values(values: tuple[Any, ...]) -> FlowRun:
    run = FlowRun(*values)
    run.steps = [SessionStep(*s) for s in values[RUN_STEPS]]
    if values[RUN_USER_MESSAGE] is not None:
        run.user_message = Message(*values[RUN_USER_MESSAGE])
    if values[RUN_AI_MESSAGE] is not None:
        run.ai_message = Message(*values[RUN_AI_MESSAGE])
    return run


class RunEvent:
    """An event of a run. The step or run it reports is given either as a record or as its
    frozen values (`step_values`, `run_values`: what the engine takes, cheaply, at the moment
    of the event); the record is made from the values only when someone reads it (a live
    subscriber), and the store encodes the values as they are."""

    __slots__ = (
        "_run",
        "_step",
        "delta",
        "encoded",
        "encoded_bytes",
        "eval_job",
        "organisation_id",
        "run_id",
        "run_values",
        "seq",
        "session_id",
        "session_step_id",
        "step_values",
        "time",
        "type",
    )

    def __init__(
        self,
        seq: int,  # 0 for live-only STEP_DELTA
        session_id: str,
        run_id: str,
        organisation_id: str,
        type: EventType,
        time: datetime,
        step: SessionStep | None = None,
        run: FlowRun | None = None,
        delta: str = "",
        session_step_id: str = "",
        eval_job: Any = None,  # the EvalJob on EVAL_COMPLETED
        *,
        step_values: tuple[Any, ...] | None = None,
        run_values: tuple[Any, ...] | None = None,
    ) -> None:
        self.seq = seq
        self.session_id = session_id
        self.run_id = run_id
        self.organisation_id = organisation_id
        self.type = type
        self.time = time
        self._step = step
        self._run = run
        self.step_values = step_values
        self.run_values = run_values
        self.delta = delta
        self.session_step_id = session_step_id
        self.eval_job = eval_job
        # Let the API layer encode a published event once for every subscriber.
        self.encoded: Any = None
        self.encoded_bytes: bytes | None = None

    @property
    def step(self) -> SessionStep | None:
        if self._step is None and self.step_values is not None:
            self._step = SessionStep(*self.step_values)
        return self._step

    @property
    def run(self) -> FlowRun | None:
        if self._run is None and self.run_values is not None:
            self._run = run_of_values(self.run_values)
        return self._run

    def __repr__(self) -> str:
        return (
            f"RunEvent(seq={self.seq}, session_id={self.session_id!r}, run_id={self.run_id!r}, "
            f"type={self.type.value})"
        )


@dataclass(slots=True)
class Journal:
    """Everything one engine move changes, committed together in one transaction.

    Records are inserted when new and updated afterwards; an update never recreates a row
    that was deleted meanwhile.
    """

    session: Session | None = None
    session_is_new: bool = False
    new_runs: list[FlowRun] = field(default_factory=list)
    runs: list[FlowRun] = field(default_factory=list)
    new_steps: list[SessionStep] = field(default_factory=list)
    steps: list[SessionStep] = field(default_factory=list)
    # Committed and then published, in order; deltas among them are published, never stored.
    events: list[RunEvent] = field(default_factory=list)
    # The lease epoch the session's writes are fenced on (0: the journal does not change the
    # session row). A journal whose epoch is no longer the session's is refused whole.
    epoch: int = 0
    # Give the session's lease up once this commits.
    release: bool = False
    # Steps removed from the session (a rolled-back run's).
    deleted_steps: list[str] = field(default_factory=list)
    # Messages appended to the session's conversation (positions set): only the new ones.
    new_messages: list[Message] = field(default_factory=list)
