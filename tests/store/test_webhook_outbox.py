"""The webhook outbox in the journal writer's commit, on SQLite and PostgreSQL: every event of a
commit is matched against the webhooks table at once, and each delivery is the one its own
webhook, organisation, flow and event type call for."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from flowsvc.domain.ids import new_id, now
from flowsvc.domain.paging import Page
from flowsvc.domain.runs import EventType
from flowsvc.domain.webhooks import Webhook
from flowsvc.store.webhook_store import Outbox, SqlWebhookStore
from tests.store.test_store_contract import (
    ORG,
    Replica,
    a_run,
    a_session,
    a_version,
    database_url,
    opening,
    run_on,
)

__all__ = ["database_url"]  # the fixture, shared with the contract suite


def a_webhook(org: str, flow_id: str, *event_types: str) -> Webhook:
    return Webhook(
        id=new_id(),
        organisation_id=org,
        url="https://example.com/hook",
        event_types=list(event_types),
        flow_id=flow_id,
        secret="whsec_c2VjcmV0",
        created_at=now() - timedelta(seconds=1),
    )


def test_a_commits_events_are_matched_to_their_own_webhooks_only(database_url: str) -> None:
    async def body(a: Replica, b: Replica) -> None:
        outbox = Outbox(a.db.batch_writer.dialect)
        a.writer.outbox = outbox
        hooks = SqlWebhookStore(a.db, a.owner)
        version = await a_version(a)
        this_flow = a_webhook(ORG, version.flow_id, "run.completed")
        any_flow = a_webhook(ORG, "", "run.started", "run.completed")
        other_flow = a_webhook(ORG, new_id(), "run.started", "run.completed")
        other_org = a_webhook("globex", "", "run.started", "run.completed")
        for hook in (this_flow, any_flow, other_flow, other_org):
            await hooks.create_webhook(hook)

        finished, started = a_session(version), a_session(version)
        finished_run, started_run = a_run(finished), a_run(started)
        commits = a.writer.commits
        await asyncio.gather(
            a.runs.record(
                opening(
                    finished,
                    finished_run,
                    EventType.RUN_STARTED,
                    EventType.STEP_COMPLETED,
                    EventType.RUN_COMPLETED,
                )
            ),
            a.runs.record(opening(started, started_run, EventType.RUN_STARTED)),
        )
        assert a.writer.commits == commits + 1  # one commit, one match for all its events
        assert outbox.take_wrote()

        async def delivered(hook: Webhook) -> list[tuple[str, str, int]]:
            found = await hooks.list_deliveries(hook.organisation_id, hook.id, Page(100, None))
            return sorted((d.session_id, d.event_type, d.seq) for d in found)

        assert await delivered(this_flow) == [(finished.id, "run.completed", 3)]
        assert await delivered(any_flow) == sorted(
            [
                (finished.id, "run.started", 1),
                (finished.id, "run.completed", 3),
                (started.id, "run.started", 1),
            ]
        )
        assert await delivered(other_flow) == []
        assert await delivered(other_org) == []

    run_on(database_url, body)


def test_a_commit_no_webhook_wants_writes_no_delivery_and_wakes_no_one(
    database_url: str,
) -> None:
    async def body(a: Replica, b: Replica) -> None:
        outbox = Outbox(a.db.batch_writer.dialect)
        a.writer.outbox = outbox
        hooks = SqlWebhookStore(a.db, a.owner)
        version = await a_version(a)
        only_failures = a_webhook(ORG, "", "run.failed")
        await hooks.create_webhook(only_failures)
        session = a_session(version)
        run = a_run(session)
        await a.runs.record(
            opening(session, run, EventType.RUN_STARTED, EventType.RUN_COMPLETED)
        )
        assert not outbox.take_wrote()
        assert await hooks.list_deliveries(ORG, only_failures.id, Page(100, None)) == []

    run_on(database_url, body)
