"""Sessions, runs, steps and events as table rows and back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any

from flowsvc.domain.evals import EvalJob, EvalJobStatus, EvalResult
from flowsvc.domain.model import Step
from flowsvc.domain.runs import (
    Cost,
    Customer,
    FlowRun,
    Message,
    RunStatus,
    Session,
    SessionStatus,
    SessionStep,
    StepStatus,
)

StepLookup = Callable[[str, str], Step]  # (flow_version_id, step_id) -> Step


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def message_json(m: Message) -> dict[str, Any]:
    return {"id": m.id, "date": m.date.isoformat(), "role": m.role, "content": m.content}


def message_from(d: dict[str, Any]) -> Message:
    return Message(d["id"], datetime.fromisoformat(d["date"]), d["role"], d["content"])


def message_row(session_id: str, m: Message) -> dict[str, Any]:
    """A message of a session's conversation as a session_messages row."""
    return {
        "session_id": session_id,
        "position": m.position,
        "id": m.id,
        "run_id": m.run_id,
        "role": m.role,
        "content": m.content,
        "created_at": m.date,
    }


def message_from_row(r: Any) -> Message:
    return Message(r.id, r.created_at, r.role, r.content, r.run_id, r.position)


def session_row(s: Session) -> dict[str, Any]:
    return {
        "id": s.id,
        "organisation_id": s.organisation_id,
        "live_flow_id": s.live_flow_id,
        "flow_version_id": s.flow_version_id,
        "version": s.version,
        "name": s.name,
        "status": s.status.value,
        "inputs": s.inputs,
        "variables": s.variables,
        "messages_count": s.message_count,
        "customer": None
        if s.customer is None
        else {
            "customer_id": s.customer.customer_id,
            "name": s.customer.name,
            "email": s.customer.email,
            "phone_number": s.customer.phone_number,
        },
        "expiration_seconds": s.expiration_seconds,
        "expires_at": s.expires_at,
        "steps_count": s.steps_count,
        "current_step_id": s.current_step_id,
        "error": s.error,
        "cost": s.cost,
        "costs": [
            {
                "type": c.type,
                "name": c.name,
                "input_tokens": c.input_tokens,
                "output_tokens": c.output_tokens,
                "cost": c.cost,
            }
            for c in s.costs
        ],
        "artifact": s.artifact,
        "request_id": s.request_id or None,
        "request_digest": s.request_digest,
        "parent_session_id": s.parent_session_id,
        "forked_from_step_id": s.forked_from_step_id,
        "last_seq": s.last_seq,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    }


def session_from(r: Any, messages: list[Message] | None = None) -> Session:
    """The session of a row; its conversation only when the caller read it (`messages`)."""
    return Session(
        id=r.id,
        organisation_id=r.organisation_id,
        live_flow_id=r.live_flow_id,
        flow_version_id=r.flow_version_id,
        version=r.version,
        name=r.name,
        status=SessionStatus(r.status),
        inputs=r.inputs,
        variables=r.variables,
        messages=messages,
        message_count=r.messages_count,
        customer=None if r.customer is None else Customer(**r.customer),
        expiration_seconds=r.expiration_seconds,
        expires_at=r.expires_at,
        created_at=r.created_at,
        updated_at=r.updated_at,
        steps_count=r.steps_count,
        current_step_id=r.current_step_id,
        error=r.error,
        cost=r.cost,
        costs=[Cost(**c) for c in r.costs],
        artifact=r.artifact,
        request_id=r.request_id or "",
        request_digest=getattr(r, "request_digest", "") or "",
        last_seq=r.last_seq,
        parent_session_id=getattr(r, "parent_session_id", "") or "",
        forked_from_step_id=getattr(r, "forked_from_step_id", "") or "",
    )


def step_row(s: SessionStep) -> dict[str, Any]:
    return {
        "id": s.id,
        "session_id": s.session_id,
        "run_id": s.run_id,
        "organisation_id": s.organisation_id,
        "position": s.position,
        "flow_version_id": s.flow_version_id,
        "step_id": s.step.id,
        "status": s.status.value,
        "prompt": s.prompt,
        "result": s.result,
        "error": s.error,
        "user_input": s.user_input,
        "input_tokens": s.input_tokens,
        "output_tokens": s.output_tokens,
        "cost": s.cost,
        "input_request_id": s.input_request_id or None,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    }


def step_from(r: Any, lookup: StepLookup) -> SessionStep:
    return SessionStep(
        id=r.id,
        session_id=r.session_id,
        run_id=r.run_id,
        organisation_id=r.organisation_id,
        position=r.position,
        flow_version_id=r.flow_version_id,
        step=lookup(r.flow_version_id, r.step_id),
        status=StepStatus(r.status),
        created_at=r.created_at,
        updated_at=r.updated_at,
        prompt=r.prompt,
        result=r.result,
        error=r.error,
        user_input=r.user_input,
        input_tokens=r.input_tokens,
        output_tokens=r.output_tokens,
        cost=r.cost,
        input_request_id=r.input_request_id or "",
    )


def run_row(run: FlowRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "organisation_id": run.organisation_id,
        "flow_id": run.flow_id,
        "session_id": run.session_id,
        "flow_version_id": run.flow_version_id,
        "version": run.version,
        "body": run.body,
        "override": run.override,
        "status": run.status.value,
        "user_message": None if run.user_message is None else message_json(run.user_message),
        "ai_message": None if run.ai_message is None else message_json(run.ai_message),
        "response": run.response,
        "error": run.error,
        "eval_job_id": run.eval_job_id,
        "eval_options": run.eval_options,
        "parent_run_id": run.parent_run_id,
        "request_id": run.request_id or None,
        "request_digest": run.request_digest,
        "trace_context": run.trace_context,
        "start_time": run.start_time,
        "end_time": run.end_time,
        "duration_ms": run.duration_ms,
        "input_tokens": run.input_tokens,
        "output_tokens": run.output_tokens,
        "cost": run.cost,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "schedule_id": run.schedule_id,
        "scheduled_time": run.scheduled_time,
        "webhook_url": run.webhook_url,
    }


def run_from(r: Any) -> FlowRun:
    return FlowRun(
        id=r.id,
        organisation_id=r.organisation_id,
        flow_id=r.flow_id,
        session_id=r.session_id,
        flow_version_id=r.flow_version_id,
        version=r.version,
        body=r.body,
        override=r.override,
        status=RunStatus(r.status),
        created_at=r.created_at,
        updated_at=r.updated_at,
        user_message=None if r.user_message is None else message_from(r.user_message),
        ai_message=None if r.ai_message is None else message_from(r.ai_message),
        response=r.response,
        error=r.error,
        eval_job_id=r.eval_job_id,
        eval_options=r.eval_options,
        parent_run_id=r.parent_run_id,
        request_id=r.request_id or "",
        request_digest=getattr(r, "request_digest", "") or "",
        cancel_requested=bool(getattr(r, "cancel_requested", False)),
        trace_context=getattr(r, "trace_context", "") or "",
        start_time=r.start_time,
        end_time=r.end_time,
        duration_ms=r.duration_ms,
        input_tokens=r.input_tokens,
        output_tokens=r.output_tokens,
        cost=r.cost,
        schedule_id=getattr(r, "schedule_id", "") or "",
        scheduled_time=getattr(r, "scheduled_time", None),
        webhook_url=getattr(r, "webhook_url", "") or "",
    )


def eval_job_row(job: EvalJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "organisation_id": job.organisation_id,
        "run_id": job.run_id,
        "flow_id": job.flow_id,
        "status": job.status.value,
        "results": [asdict(r) for r in job.results],
        "created_at": job.created_at,
        "finished_at": job.finished_at,
    }


def eval_job_json(job: EvalJob) -> dict[str, Any]:
    row = eval_job_row(job)
    row["created_at"] = _iso(job.created_at)
    row["finished_at"] = _iso(job.finished_at)
    return row


def eval_job_from(d: Any) -> EvalJob:
    """From a table row or from its JSON form inside an event payload."""
    data = d if isinstance(d, dict) else d._mapping

    def when(value: Any) -> datetime | None:
        return _when(value) if isinstance(value, str) or value is None else value

    return EvalJob(
        id=data["id"],
        organisation_id=data["organisation_id"],
        run_id=data["run_id"],
        flow_id=data["flow_id"],
        status=EvalJobStatus(data["status"]),
        created_at=when(data["created_at"]) or datetime.min,
        results=[EvalResult(**r) for r in data["results"]],
        finished_at=when(data["finished_at"]),
    )
