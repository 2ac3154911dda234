"""Webhooks: who is told about which events, the Standard Webhooks signature, and the
use cases behind WebhookService. Deliveries are written by the store in the transaction of
the event they report (an outbox); `webhook_delivery` sends them."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol
from urllib.parse import urlsplit

from flowsvc.domain.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from flowsvc.domain.ids import new_id, require_id
from flowsvc.domain.limits import Limits
from flowsvc.domain.paging import Listed, Page, listed, parse_page

# Webhook event type -> (the run event it reports, its bit in a webhook's event mask).
EVENT_TYPES: dict[str, tuple[str, int]] = {
    "run.started": ("RUN_STARTED", 1),
    "run.completed": ("RUN_COMPLETED", 2),
    "run.failed": ("RUN_FAILED", 4),
    "run.cancelled": ("RUN_CANCELLED", 8),
    "session.waiting_for_input": ("INPUT_REQUIRED", 16),
    "eval_job.completed": ("EVAL_COMPLETED", 32),
}
# Run event type -> (webhook event type, bit).
BY_RUN_EVENT: dict[str, tuple[str, int]] = {
    ev: (name, bit) for name, (ev, bit) in EVENT_TYPES.items()
}
# The run events a RunOptions.webhook_url callback reports.
RUN_END_EVENTS = frozenset({"RUN_COMPLETED", "RUN_FAILED", "RUN_CANCELLED"})
# The webhook_id of deliveries to RunOptions.webhook_url (signed with the organisation secret).
RUN_CALLBACK = "run"
SECRET_PREFIX = "whsec_"
MAX_URL_CHARS = 2048


class DeliveryStatus(StrEnum):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


@dataclass(slots=True)
class Webhook:
    id: str
    organisation_id: str
    url: str
    event_types: list[str]
    flow_id: str
    secret: str
    created_at: datetime

    @property
    def event_mask(self) -> int:
        return sum(EVENT_TYPES[t][1] for t in set(self.event_types))


@dataclass(slots=True)
class WebhookDelivery:
    id: str
    organisation_id: str
    webhook_id: str
    url: str
    event_type: str  # the webhook event type, e.g. "run.completed"
    session_id: str
    seq: int
    run_id: str
    status: DeliveryStatus
    attempts: int
    next_attempt_ms: int
    last_status_code: int
    last_error: str
    created_at: datetime
    delivered_at: datetime | None = None
    # Filled on claims: what the delivery is signed with.
    secret: str = field(default="", repr=False)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode()


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks: `v1,` and base64 of HMAC-SHA256 over "id.timestamp.body", keyed
    with the base64-decoded part of the secret after `whsec_`."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def valid_secret(secret: str) -> bool:
    try:
        return secret.startswith(SECRET_PREFIX) and bool(
            base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        )
    except (binascii.Error, ValueError):
        return False


class AllowList:
    """The hosts ("host" or "host:port") HTTP steps and webhooks may reach."""

    def __init__(self, hosts: Iterable[str]) -> None:
        self._hosts = frozenset(h.strip().lower() for h in hosts if h.strip())

    def problem(self, url: str) -> str | None:
        """Why `url` may not be called, or None."""
        if len(url) > MAX_URL_CHARS:
            return f"at most {MAX_URL_CHARS} characters"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return "not a valid URL"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "must be an http or https URL with a host"
        host = parts.hostname.lower()
        port = port or (443 if parts.scheme == "https" else 80)
        if host not in self._hosts and f"{host}:{port}" not in self._hosts:
            return f"host {host}:{port} is not on the server's HTTP allow-list"
        return None


class WebhookStore(Protocol):
    async def create_webhook(self, webhook: Webhook) -> None: ...
    async def get_webhook(self, org: str, webhook_id: str) -> Webhook | None: ...
    async def list_webhooks(self, org: str, page: Page) -> list[Webhook]: ...
    async def delete_webhook(self, org: str, webhook_id: str) -> bool: ...
    async def list_deliveries(
        self, org: str, webhook_id: str, page: Page
    ) -> list[WebhookDelivery]: ...
    async def org_secret(self, org: str) -> str | None: ...


class FlowExists(Protocol):
    async def __call__(self, org: str, flow_id: str) -> bool: ...


class Webhooks:
    def __init__(
        self,
        store: WebhookStore,
        allow: AllowList,
        flow_exists: FlowExists,
        limits: Limits,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._allow = allow
        self._flow_exists = flow_exists
        self._limits = limits
        self._clock = clock

    def check_url(self, url: str, field_name: str) -> list[FieldViolation]:
        if not url:
            return [FieldViolation(field_name, "required")]
        problem = self._allow.problem(url)
        return [] if problem is None else [FieldViolation(field_name, problem)]

    async def check_run_callback(self, org: str, url: str, field_name: str) -> None:
        """RunOptions.webhook_url: an allowed URL, and an organisation secret to sign with."""
        problems = self.check_url(url, field_name)
        if problems:
            raise InvalidArgument(problems)
        if await self._store.org_secret(org) is None:
            raise FailedPrecondition(
                "the organisation has no webhook secret to sign run callbacks with: create one "
                "with `python -m flowsvc webhook-secret --org ORG`",
                kind="WEBHOOK_SECRET",
                subject=f"organisations/{org}",
            )

    async def create(
        self, org: str, url: str, event_types: list[str], flow_id: str
    ) -> Webhook:
        problems = self.check_url(url, "webhook.url")
        if not event_types:
            problems.append(FieldViolation("webhook.event_types", "name at least one event type"))
        for i, name in enumerate(event_types):
            if name not in EVENT_TYPES:
                problems.append(
                    FieldViolation(
                        f"webhook.event_types[{i}]",
                        f"unknown event type {name[:64]!r}; one of {', '.join(EVENT_TYPES)}",
                    )
                )
        if problems:
            raise InvalidArgument(problems)
        if flow_id:
            require_id("webhook.flow_id", flow_id, "live flow")
            if not await self._flow_exists(org, flow_id):
                raise NotFound("live flow", flow_id)
        webhook = Webhook(
            id=new_id(),
            organisation_id=org,
            url=url,
            event_types=list(dict.fromkeys(event_types)),
            flow_id=flow_id,
            secret=new_secret(),
            created_at=self._clock(),
        )
        await self._store.create_webhook(webhook)
        return webhook

    async def get(self, org: str, webhook_id: str, field_name: str = "id") -> Webhook:
        require_id(field_name, webhook_id, "webhook")
        found = await self._store.get_webhook(org, webhook_id)
        if found is None:
            raise NotFound("webhook", webhook_id)
        return found

    async def list(self, org: str, page_size: int, page_token: str) -> Listed[Webhook]:
        page = parse_page(page_size, page_token, self._limits, "webhooks", org)
        return listed(await self._store.list_webhooks(org, page), page, "webhooks", org)

    async def delete(self, org: str, webhook_id: str) -> None:
        require_id("id", webhook_id, "webhook")
        if not await self._store.delete_webhook(org, webhook_id):
            raise NotFound("webhook", webhook_id)

    async def deliveries(
        self, org: str, webhook_id: str, page_size: int, page_token: str
    ) -> Listed[WebhookDelivery]:
        await self.get(org, webhook_id, "webhook_id")
        keys = ("deliveries", org, webhook_id)
        page = parse_page(page_size, page_token, self._limits, *keys)
        return listed(await self._store.list_deliveries(org, webhook_id, page), page, *keys)
