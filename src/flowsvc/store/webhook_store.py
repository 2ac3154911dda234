"""Webhooks and their delivery outbox in SQL.

`Outbox.write` runs inside the journal writer's transaction: for each committed event a
webhook may report it inserts one delivery per matching webhook of the event's organisation
(INSERT ... SELECT from webhooks: no cache, so a webhook created on any replica counts from
its commit on), and one for a run's RunOptions.webhook_url. A delivery is thus durable exactly
when its event is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, literal_column, select, text, update
from sqlalchemy.engine import Connection

from flowsvc.domain.ids import now
from flowsvc.domain.paging import Page
from flowsvc.domain.webhook_delivery import Outcome
from flowsvc.domain.webhooks import (
    BY_RUN_EVENT,
    RUN_CALLBACK,
    RUN_END_EVENTS,
    DeliveryStatus,
    Webhook,
    WebhookDelivery,
)
from flowsvc.store.column_types import UTCDateTime
from flowsvc.store.database import Database
from flowsvc.store.dialects import driver_placeholder, now_ms_sql
from flowsvc.store.sql_store import newest_first
from flowsvc.store.tables import (
    PENDING_DELIVERY,
    OrgWebhookSecretRow,
    WebhookDeliveryRow,
    WebhookRow,
)

webhooks = WebhookRow.__table__  # type: ignore[attr-defined]
deliveries = WebhookDeliveryRow.__table__  # type: ignore[attr-defined]
org_secrets = OrgWebhookSecretRow.__table__  # type: ignore[attr-defined]

_COLUMNS = (
    "id, organisation_id, webhook_id, url, event_type, session_id, seq, run_id, status, "
    "attempts, next_attempt_ms, last_status_code, last_error, created_at, delivered_at, "
    "owner_id, lease_expires_ms"
)
MAX_ERROR_CHARS = 500


class Outbox:
    """The journal writer's hook: deliveries for the events of one commit."""

    def __init__(self, dialect: Any) -> None:
        # Set when a commit wrote deliveries: the delivery worker is woken for those only.
        self.wrote = False
        p = driver_placeholder(dialect.name)
        self._created = UTCDateTime().fast_bind_processor(dialect)
        self._matching = (
            f"INSERT INTO webhook_deliveries ({_COLUMNS}) "
            f"SELECT w.id || {p}, w.organisation_id, w.id, w.url, {p}, s.id, {p}, {p}, "
            f"'PENDING', 0, 0, 0, '', {p}, NULL, NULL, 0 "
            f"FROM webhooks w JOIN sessions s ON s.id = {p} "
            f"WHERE w.organisation_id = {p} AND (w.event_mask & {p}) <> 0 "
            f"AND (w.flow_id = '' OR w.flow_id = s.live_flow_id)"
        )
        marks = ", ".join([p] * 17)
        self._callback = f"INSERT INTO webhook_deliveries ({_COLUMNS}) VALUES ({marks})"

    def write(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        matching: list[tuple[Any, ...]] = []
        callbacks: list[tuple[Any, ...]] = []
        for row in rows:
            kind = BY_RUN_EVENT.get(row["type"])
            if kind is None:
                continue
            name, bit = kind
            sid, seq = row["session_id"], row["seq"]
            created = self._created(row["time"]) if self._created else row["time"]
            suffix = f":{sid}:{seq}"
            # Matched against the webhooks table in this very transaction: a webhook created on
            # any replica gets every event committed after it, with no cache to go stale.
            matching.append((suffix, name, seq, row["run_id"], created, sid,
                             row["organisation_id"], bit))
            if row["type"] in RUN_END_EVENTS and row["webhook_url"]:
                callbacks.append((
                    RUN_CALLBACK + suffix, row["organisation_id"], RUN_CALLBACK,
                    row["webhook_url"], name, sid, seq, row["run_id"], "PENDING", 0, 0, 0, "",
                    created, None, None, 0,
                ))
        if matching:
            written = conn.exec_driver_sql(self._matching, matching)
            self.wrote = self.wrote or bool(written.rowcount)
        if callbacks:
            conn.exec_driver_sql(self._callback, callbacks)
            self.wrote = True

    def take_wrote(self) -> bool:
        wrote, self.wrote = self.wrote, False
        return wrote


def _webhook(r: Any) -> Webhook:
    return Webhook(
        id=r.id,
        organisation_id=r.organisation_id,
        url=r.url,
        event_types=list(r.event_types),
        flow_id=r.flow_id,
        secret=r.secret,
        created_at=r.created_at,
    )


def _delivery(r: Any) -> WebhookDelivery:
    return WebhookDelivery(
        id=r.id,
        organisation_id=r.organisation_id,
        webhook_id=r.webhook_id,
        url=r.url,
        event_type=r.event_type,
        session_id=r.session_id,
        seq=r.seq,
        run_id=r.run_id,
        status=DeliveryStatus(r.status),
        attempts=r.attempts,
        next_attempt_ms=r.next_attempt_ms,
        last_status_code=r.last_status_code,
        last_error=r.last_error,
        created_at=r.created_at,
        delivered_at=r.delivered_at,
    )


class SqlWebhookStore:
    def __init__(self, db: Database, owner_id: str) -> None:
        self.db = db
        self._owner = owner_id
        self._now = now_ms_sql(db.dialect_name)
        skip_locked = "" if db.is_sqlite else " FOR UPDATE OF d SKIP LOCKED"
        now = self._now
        # Due, not leased by a live replica, and first in line for its (webhook, session).
        self._claim = text(
            f"UPDATE webhook_deliveries SET owner_id = :me, lease_expires_ms = {now} + :lease "
            f"WHERE id IN (SELECT d.id FROM webhook_deliveries d "
            f"WHERE d.status = 'PENDING' AND d.next_attempt_ms <= {now} "
            f"AND (d.owner_id IS NULL OR d.lease_expires_ms < {now}) "
            f"AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.webhook_id = "
            f"d.webhook_id AND e.session_id = d.session_id AND e.{PENDING_DELIVERY} "
            f"AND e.seq < d.seq) "
            f"ORDER BY d.next_attempt_ms, d.seq LIMIT :limit{skip_locked}) RETURNING *"
        ).columns(*deliveries.c)

    # -- webhooks ------------------------------------------------------------------------

    async def create_webhook(self, webhook: Webhook) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                webhooks.insert().values(
                    id=webhook.id,
                    organisation_id=webhook.organisation_id,
                    url=webhook.url,
                    event_types=webhook.event_types,
                    event_mask=webhook.event_mask,
                    flow_id=webhook.flow_id,
                    secret=webhook.secret,
                    created_at=webhook.created_at,
                )
            )


    async def get_webhook(self, org: str, webhook_id: str) -> Webhook | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(webhooks).where(
                        webhooks.c.id == webhook_id, webhooks.c.organisation_id == org
                    )
                )
            ).first()
        return None if row is None else _webhook(row)

    async def list_webhooks(self, org: str, page: Page) -> list[Webhook]:
        query = select(webhooks).where(webhooks.c.organisation_id == org)
        async with self.db.read() as conn:
            rows = (await conn.execute(newest_first(query, webhooks, page))).all()
        return [_webhook(r) for r in rows]

    async def delete_webhook(self, org: str, webhook_id: str) -> bool:
        async with self.db.write() as conn:
            gone = await conn.execute(
                delete(webhooks).where(
                    webhooks.c.id == webhook_id, webhooks.c.organisation_id == org
                )
            )
            if not gone.rowcount:
                return False
            await conn.execute(delete(deliveries).where(deliveries.c.webhook_id == webhook_id))
        return True

    async def list_deliveries(
        self, org: str, webhook_id: str, page: Page
    ) -> list[WebhookDelivery]:
        query = select(deliveries).where(
            deliveries.c.organisation_id == org, deliveries.c.webhook_id == webhook_id
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(newest_first(query, deliveries, page))).all()
        return [_delivery(r) for r in rows]

    # -- organisation secrets -------------------------------------------------------------

    async def org_secret(self, org: str) -> str | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(org_secrets.c.secret).where(org_secrets.c.organisation_id == org)
                )
            ).first()
        return None if row is None else str(row[0])

    async def set_org_secret(self, org: str, secret: str, created_at: Any) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(org_secrets).where(org_secrets.c.organisation_id == org))
            await conn.execute(
                org_secrets.insert().values(
                    organisation_id=org, secret=secret, created_at=created_at
                )
            )

    # -- sending ---------------------------------------------------------------------------

    async def claim_deliveries(self, limit: int, lease_seconds: float) -> list[WebhookDelivery]:
        async with self.db.write() as conn:
            rows = (
                await conn.execute(
                    self._claim,
                    {"me": self._owner, "limit": limit, "lease": int(lease_seconds * 1000)},
                )
            ).all()
            claimed = [_delivery(r) for r in rows]
            hooks = {d.webhook_id for d in claimed} - {RUN_CALLBACK}
            orgs = {d.organisation_id for d in claimed if d.webhook_id == RUN_CALLBACK}
            secrets: dict[tuple[str, str], str] = {}
            if hooks:
                for wid, secret in await conn.execute(
                    select(webhooks.c.id, webhooks.c.secret).where(webhooks.c.id.in_(hooks))
                ):
                    secrets[("hook", wid)] = secret
            if orgs:
                for org, secret in await conn.execute(
                    select(org_secrets.c.organisation_id, org_secrets.c.secret).where(
                        org_secrets.c.organisation_id.in_(orgs)
                    )
                ):
                    secrets[("org", org)] = secret
        for d in claimed:
            if d.webhook_id == RUN_CALLBACK:
                d.secret = secrets.get(("org", d.organisation_id), "")
            else:
                d.secret = secrets.get(("hook", d.webhook_id), "")
        return claimed

    async def forget_owners(self) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(deliveries)
                .where(deliveries.c.owner_id.is_not(None))
                .values(owner_id=None, lease_expires_ms=0)
            )

    async def release_deliveries(self, ids: list[str]) -> None:
        if not ids:
            return
        async with self.db.write() as conn:
            await conn.execute(
                update(deliveries)
                .where(deliveries.c.id.in_(ids), deliveries.c.owner_id == self._owner)
                .values(owner_id=None, lease_expires_ms=0)
            )

    async def record_delivered(self, d: WebhookDelivery, status_code: int) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(deliveries)
                .where(deliveries.c.id == d.id)
                .values(
                    status=DeliveryStatus.DELIVERED.value,
                    attempts=deliveries.c.attempts + 1,
                    last_status_code=status_code,
                    last_error="",
                    delivered_at=now(),
                    owner_id=None,
                    lease_expires_ms=0,
                )
            )

    async def record_failed(
        self, d: WebhookDelivery, outcome: Outcome, retry_in: float | None
    ) -> None:
        values: dict[str, Any] = {
            "attempts": deliveries.c.attempts + 1,
            "last_status_code": outcome.status_code,
            "last_error": outcome.error[:MAX_ERROR_CHARS],
            "owner_id": None,
            "lease_expires_ms": 0,
        }
        if retry_in is None:
            values["status"] = DeliveryStatus.FAILED.value
        else:
            values["next_attempt_ms"] = literal_column(f"{self._now} + {int(retry_in * 1000)}")
        async with self.db.write() as conn:
            await conn.execute(update(deliveries).where(deliveries.c.id == d.id).values(values))

