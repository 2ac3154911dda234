"""The lookups made again and again — active runs, runs whose evaluation job is missing,
sessions due to expire, webhook deliveries to claim, the step a retried SubmitUserInput
answered, a schedule's runs — do not read the history kept. Active, scheduled and evaluated
runs, pending deliveries and steps answered by request go through partial indexes, which hold
no entry for a finished run (nor one with no schedule or evaluation), a delivery made or a step
answered without a request id, so neither those lookups nor a run's writes grow with history.
(Lookups of active runs by a column the active indexes do not start with — cancel requests,
counts by organisation, a schedule's active run — read every active run: bounded by the work
in flight, not by what is stored.) The plans are SQLite's, whose planner must see the indexes'
predicates in the queries."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine

from flowsvc.domain.flows import FlowCatalog
from flowsvc.domain.limits import Limits
from flowsvc.domain.model import FlowVersion, Step, StepType, Transition
from flowsvc.domain.paging import Page
from flowsvc.domain.runs import Journal
from flowsvc.store.database import Database
from flowsvc.store.eval_store import SqlEvalStore
from flowsvc.store.journal_writer import JournalWriter
from flowsvc.store.lease_store import SqlLeases
from flowsvc.store.run_store import SqlRunStore
from flowsvc.store.schedule_store import SqlScheduleStore
from flowsvc.store.sql_store import SqlStore
from flowsvc.store.tables import (
    ACTIVE_RUN,
    ANSWERED_BY_REQUEST,
    PENDING_DELIVERY,
    RUN_WITH_EVAL_JOB,
    SCHEDULED_RUN,
)
from flowsvc.store.webhook_store import SqlWebhookStore
from tests.harness import sqlite_url
from tests.store.test_store_contract import a_session, database_url

__all__ = ["database_url"]  # the contract suite's backends

T = TypeVar("T")
START, END = StepType.START, StepType.END
PARTIAL = ("ix_flow_runs_active_session", "ix_flow_runs_active_org_flow", "ix_flow_runs_eval_job")


async def a_flow_version(flows: SqlStore) -> FlowVersion:
    ends = [Step(id="", name=n, step_type=t) for n, t in (("start", START), ("end", END))]
    to_end = Transition(id="", source_step_id="", target_step_id="", source="start", target="end")
    flow = await FlowCatalog(flows, Limits()).create_flow("org", "flow", "", ends, [to_end])
    assert flow.current_version is not None
    return flow.current_version


def on_a_new_store(url: str, act: Callable[[Database], Awaitable[T]]) -> T:
    """`act` on a freshly migrated database, closed afterwards."""

    async def main() -> T:
        db = Database(url)
        await db.migrate()
        try:
            return await act(db)
        finally:
            await db.close()

    return asyncio.run(main())


def run_store(db: Database) -> SqlRunStore:
    return SqlRunStore(db, SqlStore(db), JournalWriter(db, "replica", 1.0))


@contextmanager
def capturing() -> Iterator[list[tuple[str, Any]]]:
    """The statements any engine executes meanwhile, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", capture)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", capture)


def statements_of(
    path: Path, act: Callable[[Database], Awaitable[object]]
) -> list[tuple[str, Any]]:
    """The statements, with their parameters, that `act` issues on a new store at `path`."""

    async def captured(db: Database) -> list[tuple[str, Any]]:
        with capturing() as seen:
            await act(db)
        return seen

    return on_a_new_store(sqlite_url(path), captured)


def plan(path: Path, statement: str, parameters: Any) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]


def test_active_and_unevaluated_runs_are_found_through_partial_indexes(tmp_path: Path) -> None:
    path = tmp_path / "plans.db"

    async def lookups(db: Database) -> None:
        leases = SqlLeases(db, "replica", 1.0)
        await leases.claimable(10)
        await leases.active_runs("session")
        await leases.active_runs_of_flow("org", "flow")
        await leases.active_runs_by_org()
        await leases.cancel_requests()
        await SqlScheduleStore(db, "replica").has_active_run("schedule")
        await SqlEvalStore(db, "replica", 1.0).runs_missing_jobs()

    statements = statements_of(path, lookups)

    assert len(statements) == 7
    for statement, parameters in statements:
        steps = plan(path, statement, parameters)
        on_runs = [s for s in steps if "flow_runs" in s]
        assert on_runs, (statement, steps)
        assert all(any(ix in s for ix in PARTIAL) for s in on_runs), (statement, steps)
        assert not any(s.startswith("SCAN s") and "flow_runs" not in s for s in steps), steps


def test_the_expiry_sweep_reads_only_sessions_due(tmp_path: Path) -> None:
    path = tmp_path / "plans.db"

    [(statement, parameters)] = statements_of(
        path, lambda db: run_store(db).sessions_expired_by(datetime.now(UTC), 500)
    )
    assert plan(path, statement, parameters) == [
        "SEARCH sessions USING INDEX ix_sessions_expiry (status=? AND expires_at<?)"
    ]


def test_a_retried_answer_finds_its_step_among_the_steps_answered_by_request(
    tmp_path: Path,
) -> None:
    path = tmp_path / "plans.db"

    [(statement, parameters)] = statements_of(
        path, lambda db: run_store(db).step_by_input_request("session", "request")
    )
    assert plan(path, statement, parameters) == [
        "SEARCH session_steps USING INDEX ix_session_steps_input_request "
        "(session_id=? AND input_request_id=?)"
    ]


def test_a_delivery_is_claimed_after_looking_only_at_pending_deliveries_of_its_session(
    tmp_path: Path,
) -> None:
    path = tmp_path / "plans.db"

    statements = statements_of(
        path, lambda db: SqlWebhookStore(db, "replica").claim_deliveries(10, 1.0)
    )
    [(statement, parameters)] = [
        (s, p) for s, p in statements if s.startswith("UPDATE webhook_deliveries")
    ]
    steps = plan(path, statement, parameters)
    earlier_pending = "ix_webhook_deliveries_order (webhook_id=? AND session_id=? AND seq<?)"
    assert f"SEARCH e USING INDEX {earlier_pending}" in steps, steps


def test_a_released_session_is_checked_for_queued_runs_among_active_runs_only(
    tmp_path: Path,
) -> None:
    """Giving a lease up asks, in the same commit, whether runs were queued on the session
    meanwhile: a long session's finished runs must not be read to answer."""
    path = tmp_path / "plans.db"

    async def release(db: Database) -> list[tuple[str, Any]]:
        version = await a_flow_version(SqlStore(db))
        writer = JournalWriter(db, "replica", 1.0)
        try:
            with capturing() as seen:
                await writer.record(Journal(session=a_session(version), epoch=1, release=True))
        finally:
            await writer.close()
        return seen

    statements = on_a_new_store(sqlite_url(path), release)
    [(statement, parameters)] = [(s, p) for s, p in statements if "SELECT DISTINCT" in s]
    assert plan(path, statement, parameters) == [
        "SEARCH flow_runs USING INDEX ix_flow_runs_active_session (session_id=?)"
    ]


def test_a_schedules_runs_are_listed_from_the_index_of_scheduled_runs(tmp_path: Path) -> None:
    path = tmp_path / "plans.db"

    [(statement, parameters)] = statements_of(
        path,
        lambda db: run_store(db).list_runs(
            "org", "", "", Page(size=10, after=None), schedule_id="schedule"
        ),
    )
    [search] = plan(path, statement, parameters)
    assert search.startswith("SEARCH flow_runs USING INDEX ix_flow_runs_schedule_created"), search


def test_deleting_a_flow_reads_only_its_own_rows(tmp_path: Path) -> None:
    """The cascade runs under the write lock: a scan of every session, run or job there is
    would hold every other write back for as long as it takes."""
    path = tmp_path / "plans.db"

    async def delete_one(db: Database) -> list[tuple[str, Any]]:
        flows = SqlStore(db)
        version = await a_flow_version(flows)
        with capturing() as seen:
            assert await flows.delete_flow("org", version.flow_id)
        return seen

    statements = on_a_new_store(sqlite_url(path), delete_one)
    deletes = [(s, p) for s, p in statements if s.startswith("DELETE")]
    assert len(deletes) == 8  # the flow, events, steps, messages, runs, jobs, sessions, versions
    for statement, parameters in deletes:
        steps = plan(path, statement, parameters)
        assert not [s for s in steps if s.startswith("SCAN")], (statement, steps)


def test_the_partial_indexes_hold_only_the_rows_their_lookups_ask_for(
    database_url: str,
) -> None:
    async def sync_url(db: Database) -> Any:
        return db.sync_url

    engine = create_engine(on_a_new_store(database_url, sync_url))
    catalog = (
        "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
        if engine.dialect.name == "sqlite"
        else "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
    )
    try:
        with engine.connect() as conn:
            definitions: dict[str, str] = {r[0]: r[1] for r in conn.execute(text(catalog))}
    finally:
        engine.dispose()

    def predicate(name: str) -> str:
        return definitions[name].split(" WHERE ", 1)[1]

    partial = {
        "ix_flow_runs_active_session": ACTIVE_RUN,
        "ix_flow_runs_active_org_flow": ACTIVE_RUN,
        "ix_flow_runs_schedule_created": SCHEDULED_RUN,
        "ix_flow_runs_eval_job": RUN_WITH_EVAL_JOB,
        "ix_webhook_deliveries_order": PENDING_DELIVERY,
        "ix_session_steps_input_request": ANSWERED_BY_REQUEST,
    }
    for name, words in partial.items():
        if engine.dialect.name == "sqlite":  # kept as written: the queries' words must match
            assert predicate(name) == words
        else:  # printed back its own way: ((status)::text = ANY ((ARRAY[...])::text[]))
            column = words.split(" ", 1)[0]
            assert column in predicate(name), definitions[name]
    whole_table = {"ix_flow_runs_status", "ix_flow_runs_org_status", "ix_flow_runs_session_status"}
    assert not whole_table & set(definitions)
