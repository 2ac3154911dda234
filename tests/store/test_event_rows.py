"""Event rows: written as positional arrays from the values the engine froze; rows written
before, by field name, still read to the same events (on both backends)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import insert

from flowsvc.domain.evals import EvalJob, EvalJobStatus
from flowsvc.domain.ids import new_id
from flowsvc.domain.model import FlowVersion, Step, StepType
from flowsvc.domain.runs import (
    EventType,
    FlowRun,
    Journal,
    Message,
    RunEvent,
    RunStatus,
    SessionStep,
    StepStatus,
    run_values,
    step_values,
)
from flowsvc.store.event_codec import (
    MESSAGE_FIELDS,
    RUN_FIELDS,
    STEP_FIELDS,
    event_from,
    event_row,
    payload_text,
    version_ids_in,
)
from flowsvc.store.run_codec import run_row, step_row
from flowsvc.store.tables import RunEventRow
from tests.store.test_store_contract import (
    ORG,
    a_run,
    a_session,
    a_step,
    a_version,
    database_url,
    run_on,
)

__all__ = ["database_url"]  # the contract suite's backends

STAMP = datetime(2026, 12, 3, 15, 4, 5, 123456, tzinfo=UTC)
START = Step(id="st-start", name="start", step_type=StepType.START)
LLM = Step(id="st-llm", name="ask", step_type=StepType.LLM)
STEPS = {("fv-1", START.id): START, ("fv-1", LLM.id): LLM}


def lookup(version_id: str, step_id: str) -> Step:
    return STEPS[(version_id, step_id)]


def a_session_step(step: Step, position: int, **changes: Any) -> SessionStep:
    s = SessionStep(
        id=f"ss-{position}",
        session_id="se-1",
        run_id="ru-1",
        organisation_id="acme",
        position=position,
        flow_version_id="fv-1",
        step=step,
        status=StepStatus.COMPLETED,
        created_at=STAMP,
        updated_at=STAMP + timedelta(seconds=position),
        prompt="say ünïcödé \"quoted\"",
        result="said",
        input_tokens=3,
        output_tokens=4,
        cost=0.25,
    )
    for name, value in changes.items():
        setattr(s, name, value)
    return s


def a_finished_run() -> FlowRun:
    return FlowRun(
        id="ru-1",
        organisation_id="acme",
        flow_id="fl-1",
        session_id="se-1",
        flow_version_id="fv-1",
        version=2,
        body={"message": "hi", "nested": {"n": [1, 2.5, None, True]}},
        override={"temperature": 0.5},
        status=RunStatus.COMPLETE,
        created_at=STAMP,
        updated_at=STAMP + timedelta(seconds=9),
        user_message=Message("m-1", STAMP, "user", "hi", "ru-1", 1),
        ai_message=Message("m-2", STAMP + timedelta(seconds=9), "assistant", "said", "ru-1", 2),
        response="said",
        eval_options={"eval_flow_ids": ["x"]},
        request_id="req-1",
        request_digest="d" * 64,
        trace_context="00-abc-def-01",
        start_time=STAMP,
        end_time=STAMP + timedelta(seconds=9),
        duration_ms=9000,
        input_tokens=3,
        output_tokens=4,
        cost=0.25,
        steps=[a_session_step(START, 1), a_session_step(LLM, 2, input_request_id="ir-1")],
        schedule_id="sc-1",
        scheduled_time=STAMP - timedelta(minutes=1),
        webhook_url="https://example.com/hook",
    )


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def written_before(e: RunEvent) -> dict[str, Any]:
    """The payload the code before positional arrays wrote for the event (by field name)."""

    def step(s: SessionStep) -> dict[str, Any]:
        row = step_row(s)
        row["created_at"], row["updated_at"] = iso(s.created_at), iso(s.updated_at)
        return row

    payload: dict[str, Any] = {}
    if e.step is not None:
        payload["step"] = step(e.step)
    if e.run is not None:
        row = run_row(e.run)
        for key in ("start_time", "end_time", "created_at", "updated_at", "scheduled_time"):
            row[key] = iso(row[key])
        row["steps"] = [step(s) for s in e.run.steps]
        payload["run"] = row
    return payload


class Row:
    def __init__(self, row: dict[str, Any], payload: dict[str, Any]) -> None:
        self.__dict__.update(row)
        self.payload = payload


def stored(e: RunEvent, payload: dict[str, Any] | None = None) -> RunEvent:
    """The event as the store reads it back: its row with the payload through JSON."""
    row = event_row(e)
    text = payload_text(row["payload"] if payload is None else payload)
    return event_from(Row(row, orjson.loads(text)), lookup)


def an_event(**what: Any) -> RunEvent:
    return RunEvent(0, "se-1", "ru-1", "acme", EventType.STEP_COMPLETED, STAMP, **what)


def test_the_arrays_follow_the_records_fields() -> None:
    # Stored arrays are read by these orders: a record whose fields change needs a new payload
    # key, or rows already written would be read wrongly.
    assert SessionStep.__slots__ == STEP_FIELDS
    assert FlowRun.__slots__ == RUN_FIELDS
    assert Message.__slots__ == MESSAGE_FIELDS


def test_a_step_event_reads_back_as_the_old_rows_and_the_live_event() -> None:
    live = an_event(step_values=step_values(a_session_step(LLM, 2, input_request_id="ir-1")))
    new, old = stored(live), stored(live, written_before(live))
    assert new.step == old.step == live.step
    assert new.session_step_id == old.session_step_id == "ss-2"


def test_a_run_event_reads_back_as_the_old_rows() -> None:
    run = a_finished_run()
    live = an_event(run_values=run_values(run))
    new, old = stored(live), stored(live, written_before(live))
    assert new.run is not None and old.run is not None
    assert new.run == old.run
    assert [s.step for s in new.run.steps] == [START, LLM]
    assert new.run.user_message == Message("m-1", STAMP, "user", "hi")


def test_a_run_event_is_the_run_at_the_moment_of_the_event() -> None:
    run = a_finished_run()
    run.cancel_requested = True
    event = an_event(run_values=run_values(run))
    run.steps[0].result = "changed later"
    run.steps.append(a_session_step(LLM, 3))
    assert run.ai_message is not None
    run.ai_message.content = "changed later"
    seen = a_finished_run()
    seen.cancel_requested = True
    assert event.run == seen
    back = stored(event).run
    assert back is not None
    assert [s.result for s in back.steps] == ["said", "said"]
    assert back.ai_message is not None and back.ai_message.content == "said"
    assert not back.cancel_requested  # a request to cancel is never read from an event


def test_events_given_records_are_stored_as_their_values() -> None:
    step = a_session_step(START, 1)
    assert stored(an_event(step=step)).step == step
    run = a_finished_run()
    run.eval_job = EvalJob("ej-1", "acme", "ru-1", "fl-1", EvalJobStatus.COMPLETE, STAMP)
    back = stored(an_event(run=run)).run
    assert back is not None and back.eval_job is None  # not stored with the run, as before
    assert back.steps == run.steps


def test_the_versions_to_look_up_are_found_in_both_forms() -> None:
    live = an_event(run_values=run_values(a_finished_run()))
    assert version_ids_in(orjson.loads(payload_text(event_row(live)["payload"]))) == {"fv-1"}
    assert version_ids_in(written_before(live)) == {"fv-1"}


def test_a_run_events_row_names_its_callback_url_for_the_outbox() -> None:
    assert event_row(an_event(run_values=run_values(a_finished_run())))["webhook_url"] == (
        "https://example.com/hook"
    )
    assert event_row(an_event())["webhook_url"] == ""


def test_rows_written_before_read_from_the_database_as_new_ones(database_url: str) -> None:
    async def body(a: Any, b: Any) -> None:
        version: FlowVersion = await a_version(a)
        session = a_session(version)
        run = a_run(session)
        run.steps = [a_step(run, version, 1)]
        run.user_message = Message(new_id(), run.created_at, "user", "hi")
        events = [
            RunEvent(0, session.id, run.id, ORG, EventType.STEP_COMPLETED, run.created_at,
                     step_values=step_values(run.steps[0])),
            RunEvent(0, session.id, run.id, ORG, EventType.RUN_COMPLETED, run.created_at,
                     run_values=run_values(run)),
        ]  # fmt: skip
        await a.runs.record(
            Journal(session=session, session_is_new=True, epoch=1, new_runs=[run], events=events)
        )
        async with a.db.write() as conn:
            for seq, e in enumerate(events, start=3):
                row = {**event_row(e), "seq": seq, "payload": written_before(e)}
                del row["webhook_url"]
                await conn.execute(insert(RunEventRow.__table__), row)  # type: ignore[attr-defined]
        read = await b.runs.events_after(session.id, 0, "", 10)
        assert [e.seq for e in read] == [1, 2, 3, 4]
        assert read[0].step == read[2].step == run.steps[0]
        assert read[1].run == read[3].run
        assert read[1].run is not None and read[1].run.steps == run.steps

    run_on(database_url, body)
