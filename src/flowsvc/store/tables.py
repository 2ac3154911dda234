"""SQLModel tables. Only the store package sees them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ForeignKey,
    Index,
    LargeBinary,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

# Re-exported: migrations written before column_types existed name it from here.
from flowsvc.store.column_types import UTCDateTime as UTCDateTime

# The predicates of the partial indexes below. A query uses such an index only if its WHERE
# holds the same predicate with the same constants (SQLite matches the expression, not its
# meaning; PostgreSQL cannot prove it from a bound parameter): store queries include these.
ACTIVE_RUN = "status IN ('QUEUED', 'RUNNING')"
SCHEDULED_RUN = "schedule_id != ''"
RUN_WITH_EVAL_JOB = "eval_job_id != ''"
PENDING_DELIVERY = "status = 'PENDING'"
ANSWERED_BY_REQUEST = "input_request_id IS NOT NULL"


def _partial(name: str, *columns: str, where: str) -> Index:
    """An index of only the rows `where` holds for. flow_runs' status, schedule and
    evaluation indexes are partial: a run inserted already finished (a lone instant run is
    one commit) or with no schedule or evaluation adds no entry to them, and, on a long-lived
    session, no page of theirs is written for it. Webhook deliveries' order index holds the
    pending ones: the claim's look for an earlier pending delivery of the same session then
    reads those, not every delivery the session ever had. Steps answered with a request id:
    a retried SubmitUserInput finds its step among those, not among all the session's."""
    return Index(name, *columns, sqlite_where=text(where), postgresql_where=text(where))


def _when(nullable: bool = False) -> Any:
    return Field(sa_column=Column(UTCDateTime(), nullable=nullable))


class ApiKeyRow(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=32)
    organisation_id: str = Field(max_length=128, index=True)
    salt: bytes = Field(sa_column=Column(LargeBinary(), nullable=False))
    secret_hash: bytes = Field(sa_column=Column(LargeBinary(), nullable=False))
    created_at: datetime = _when()
    expires_at: datetime | None = _when(nullable=True)
    revoked_at: datetime | None = _when(nullable=True)
    last_used_at: datetime | None = _when(nullable=True)


class LiveFlowRow(SQLModel, table=True):
    __tablename__ = "live_flows"
    __table_args__ = (
        Index("ix_live_flows_org_created", "organisation_id", "created_at", "id"),
        UniqueConstraint("organisation_id", "request_id", name="uq_live_flows_request"),
    )

    id: str = Field(primary_key=True, max_length=36)
    organisation_id: str = Field(max_length=128)
    name: str
    description: str
    current_version_id: str | None = Field(default=None, max_length=36)
    auto_eval_flow_ids: list[str] = Field(sa_column=Column(JSON, nullable=False))
    request_id: str | None = Field(default=None, max_length=128)
    request_digest: str = Field(default="", max_length=64)
    created_at: datetime = _when()
    updated_at: datetime = _when()


class FlowVersionRow(SQLModel, table=True):
    __tablename__ = "flow_versions"
    __table_args__ = (
        UniqueConstraint("flow_id", "version", name="uq_flow_versions_number"),
        Index("ix_flow_versions_flow_created", "flow_id", "created_at", "id"),
    )

    id: str = Field(primary_key=True, max_length=36)
    flow_id: str = Field(
        sa_column=Column(ForeignKey("live_flows.id", ondelete="CASCADE"), nullable=False)
    )
    organisation_id: str = Field(max_length=128)
    version: int
    graph: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _when()


class SessionRow(SQLModel, table=True):
    __tablename__ = "sessions"
    __table_args__ = (
        Index("ix_sessions_org_created", "organisation_id", "created_at", "id"),
        Index(
            "ix_sessions_org_flow_created", "organisation_id", "live_flow_id", "created_at", "id"
        ),
        Index("ix_sessions_org_status_created", "organisation_id", "status", "created_at", "id"),
        Index("ix_sessions_expiry", "status", "expires_at"),
        UniqueConstraint("organisation_id", "request_id", name="uq_sessions_request"),
    )

    id: str = Field(primary_key=True, max_length=36)
    organisation_id: str = Field(max_length=128)
    live_flow_id: str = Field(max_length=36)
    flow_version_id: str = Field(max_length=36)
    version: int
    name: str
    status: str = Field(max_length=24)
    inputs: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    variables: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    customer: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    expiration_seconds: int
    expires_at: datetime = _when()
    steps_count: int
    current_step_id: str
    error: str
    cost: float
    costs: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    artifact: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    request_id: str | None = Field(default=None, max_length=128)
    last_seq: int
    created_at: datetime = _when()
    updated_at: datetime = _when()
    # The lease: which replica may change this session and run its runs, until when (database
    # clock, Unix milliseconds), and the fencing epoch every write of the holder is checked on.
    owner_id: str | None = Field(default=None, max_length=36)
    lease_epoch: int = Field(default=0)
    lease_expires_ms: int = Field(sa_column=Column(BigInteger(), nullable=False, default=0))
    request_digest: str = Field(default="", max_length=64)
    # A session made by ForkSession: the session and step it was forked from.
    parent_session_id: str = Field(default="", max_length=36)
    forked_from_step_id: str = Field(default="", max_length=36)
    # The conversation is in session_messages; this counts its rows (the message cap).
    messages_count: int = Field(default=0)


class SessionMessageRow(SQLModel, table=True):
    """A session's conversation, one row a message, appended to and never rewritten: written
    in the journal transaction of the run that added it, with its run (forks read the
    conversation as it was at a run)."""

    __tablename__ = "session_messages"

    session_id: str = Field(primary_key=True, max_length=36)
    position: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    id: str
    run_id: str = Field(max_length=36)
    role: str
    content: str
    created_at: datetime = _when()


class FlowRunRow(SQLModel, table=True):
    __tablename__ = "flow_runs"
    __table_args__ = (
        Index("ix_flow_runs_org_created", "organisation_id", "created_at", "id"),
        Index("ix_flow_runs_org_flow_created", "organisation_id", "flow_id", "created_at", "id"),
        Index("ix_flow_runs_session_created", "session_id", "created_at", "id"),
        _partial(
            "ix_flow_runs_active_session", "session_id", "created_at", "id", where=ACTIVE_RUN
        ),
        _partial("ix_flow_runs_active_org_flow", "organisation_id", "flow_id", where=ACTIVE_RUN),
        UniqueConstraint("organisation_id", "request_id", name="uq_flow_runs_request"),
        _partial(
            "ix_flow_runs_schedule_created", "schedule_id", "created_at", "id", where=SCHEDULED_RUN
        ),
        _partial("ix_flow_runs_eval_job", "eval_job_id", where=RUN_WITH_EVAL_JOB),
    )

    id: str = Field(primary_key=True, max_length=36)
    organisation_id: str = Field(max_length=128)
    flow_id: str = Field(max_length=36)
    session_id: str = Field(max_length=36)
    flow_version_id: str = Field(max_length=36)
    version: int
    body: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    override: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    status: str = Field(max_length=24)
    user_message: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    ai_message: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    response: str
    error: str
    eval_job_id: str
    eval_options: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    parent_run_id: str
    request_id: str | None = Field(default=None, max_length=128)
    start_time: datetime | None = _when(nullable=True)
    end_time: datetime | None = _when(nullable=True)
    duration_ms: int
    input_tokens: int
    output_tokens: int
    cost: float
    created_at: datetime = _when()
    updated_at: datetime = _when()
    # Set by CancelFlowRun on a replica that does not run it: the owner cancels it.
    cancel_requested: bool = Field(default=False)
    # A digest of the request that made the run: a reused request_id must repeat it.
    request_digest: str = Field(default="", max_length=64)
    trace_context: str = Field(default="", max_length=64)
    # The schedule and tick that started the run; a one-off callback URL for its end.
    schedule_id: str = Field(default="", max_length=36)
    scheduled_time: datetime | None = _when(nullable=True)
    webhook_url: str = Field(default="")


class SessionStepRow(SQLModel, table=True):
    __tablename__ = "session_steps"
    __table_args__ = (
        Index("ix_session_steps_session_position", "session_id", "position"),
        Index("ix_session_steps_run_position", "run_id", "position"),
        _partial(
            "ix_session_steps_input_request",
            "session_id",
            "input_request_id",
            where=ANSWERED_BY_REQUEST,
        ),
    )

    id: str = Field(primary_key=True, max_length=36)
    session_id: str = Field(max_length=36)
    run_id: str = Field(max_length=36)
    organisation_id: str = Field(max_length=128)
    position: int
    flow_version_id: str = Field(max_length=36)
    step_id: str = Field(max_length=64)
    status: str = Field(max_length=24)
    prompt: str
    result: str
    error: str
    user_input: str
    input_tokens: int
    output_tokens: int
    cost: float
    input_request_id: str | None = Field(default=None, max_length=128)
    created_at: datetime = _when()
    updated_at: datetime = _when()


class RunEventRow(SQLModel, table=True):
    __tablename__ = "run_events"
    __table_args__ = (Index("ix_run_events_run_seq", "run_id", "seq"),)

    session_id: str = Field(primary_key=True, max_length=36)
    seq: int = Field(primary_key=True)
    run_id: str = Field(max_length=36)
    organisation_id: str = Field(max_length=128)
    type: str = Field(max_length=24)
    time: datetime = _when()
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class EvalJobRow(SQLModel, table=True):
    __tablename__ = "eval_jobs"
    __table_args__ = (
        Index("ix_eval_jobs_org_created", "organisation_id", "created_at", "id"),
        Index("ix_eval_jobs_org_flow_created", "organisation_id", "flow_id", "created_at", "id"),
        Index("ix_eval_jobs_run", "run_id"),
        Index("ix_eval_jobs_status", "status"),
    )

    id: str = Field(primary_key=True, max_length=36)
    organisation_id: str = Field(max_length=128)
    run_id: str = Field(max_length=36)
    flow_id: str = Field(max_length=36)
    status: str = Field(max_length=24)
    results: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _when()
    finished_at: datetime | None = _when(nullable=True)
    # The replica running the job and until when (database clock, Unix milliseconds).
    owner_id: str | None = Field(default=None, max_length=36)
    lease_expires_ms: int = Field(sa_column=Column(BigInteger(), nullable=False, default=0))


class WebhookRow(SQLModel, table=True):
    __tablename__ = "webhooks"
    __table_args__ = (Index("ix_webhooks_org_created", "organisation_id", "created_at", "id"),)

    id: str = Field(primary_key=True, max_length=36)
    organisation_id: str = Field(max_length=128)
    url: str
    event_types: list[str] = Field(sa_column=Column(JSON, nullable=False))
    # One bit per event type: the journal writer's INSERT ... SELECT matches on it.
    event_mask: int
    flow_id: str = Field(default="", max_length=36)
    secret: str = Field(max_length=64)
    created_at: datetime = _when()


class WebhookDeliveryRow(SQLModel, table=True):
    """The outbox: written in the transaction of the event it reports."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_ms"),
        _partial(
            "ix_webhook_deliveries_order", "webhook_id", "session_id", "seq", where=PENDING_DELIVERY
        ),
        Index("ix_webhook_deliveries_list", "organisation_id", "webhook_id", "created_at", "id"),
    )

    # webhook id (or "run" for RunOptions.webhook_url), session id and event seq.
    id: str = Field(primary_key=True, max_length=96)
    organisation_id: str = Field(max_length=128)
    webhook_id: str = Field(max_length=36)
    url: str
    event_type: str = Field(max_length=32)
    session_id: str = Field(max_length=36)
    seq: int
    run_id: str = Field(max_length=36)
    status: str = Field(max_length=12)
    attempts: int
    next_attempt_ms: int = Field(sa_column=Column(BigInteger(), nullable=False))
    last_status_code: int
    last_error: str
    created_at: datetime = _when()
    delivered_at: datetime | None = _when(nullable=True)
    owner_id: str | None = Field(default=None, max_length=36)
    lease_expires_ms: int = Field(sa_column=Column(BigInteger(), nullable=False, default=0))


class OrgWebhookSecretRow(SQLModel, table=True):
    """The secret RunOptions.webhook_url callbacks of an organisation are signed with."""

    __tablename__ = "webhook_org_secrets"

    organisation_id: str = Field(primary_key=True, max_length=128)
    secret: str = Field(max_length=64)
    created_at: datetime = _when()


class ScheduleRow(SQLModel, table=True):
    __tablename__ = "schedules"
    __table_args__ = (
        Index("ix_schedules_org_created", "organisation_id", "created_at", "id"),
        Index("ix_schedules_due", "paused", "next_tick_at"),
        UniqueConstraint("organisation_id", "request_id", name="uq_schedules_request"),
    )

    id: str = Field(primary_key=True, max_length=36)
    organisation_id: str = Field(max_length=128)
    flow_id: str = Field(max_length=36)
    cron: str = Field(default="", max_length=256)
    time_zone: str = Field(default="", max_length=64)
    interval_seconds: int = Field(sa_column=Column(BigInteger(), nullable=False, default=0))
    body: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    options: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    overlap_policy: str = Field(max_length=16)
    catch_up: str = Field(max_length=16)
    paused: bool = Field(default=False)
    # The next tick to run (UTC); the tick worker moves it on once that tick's run exists.
    next_tick_at: datetime | None = _when(nullable=True)
    request_id: str | None = Field(default=None, max_length=128)
    request_digest: str = Field(default="", max_length=64)
    created_at: datetime = _when()
    updated_at: datetime = _when()
    owner_id: str | None = Field(default=None, max_length=36)
    lease_expires_ms: int = Field(sa_column=Column(BigInteger(), nullable=False, default=0))


metadata = SQLModel.metadata
