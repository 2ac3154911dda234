"""Sending the outbox: each replica claims due deliveries (leased in the database, so a
delivery is sent by one replica at a time and picked up again if that replica dies), POSTs
them concurrently with a timeout, and records the outcome.

A delivery is due when its next attempt time has come and no earlier delivery of the same
session to the same webhook is still pending: deliveries are ordered per session. A receiver
that is slow or down holds only its own deliveries (at most `per_webhook` in flight per
replica); runs never wait on any of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from flowsvc.domain.webhooks import AllowList, WebhookDelivery, signature

log = logging.getLogger("flowsvc.webhooks")

EXCERPT = 200


@dataclass(frozen=True, slots=True)
class Outcome:
    status_code: int  # 0: no answer (connection error, timeout)
    error: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300


class Sender(Protocol):
    async def post(
        self, url: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> Outcome: ...


class DeliveryStore(Protocol):
    async def claim_deliveries(self, limit: int, lease_seconds: float) -> list[WebhookDelivery]: ...
    async def release_deliveries(self, ids: list[str]) -> None: ...
    async def record_delivered(self, d: WebhookDelivery, status_code: int) -> None: ...
    async def record_failed(
        self, d: WebhookDelivery, outcome: Outcome, retry_in: float | None
    ) -> None: ...


# What a delivery reports, as the JSON of a FlowRun, Session or EvalJob; None if it is gone.
Render = Callable[[WebhookDelivery], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: base, base*factor, ... capped at `cap` seconds, until the next
    attempt would come more than `window` seconds after the event; then FAILED."""

    base: float = 5.0
    factor: float = 3.0
    cap: float = 6 * 3600.0
    window: float = 86_400.0

    def delay(self, attempts: int) -> float:
        """Seconds before the next try, after `attempts` failed ones."""
        return float(min(self.base * self.factor ** max(attempts - 1, 0), self.cap))


def body_of(event_type: str, created_at: datetime, data: dict[str, Any]) -> bytes:
    stamp = created_at.isoformat().replace("+00:00", "Z")
    return json.dumps(
        {"type": event_type, "timestamp": stamp, "data": data}, separators=(",", ":")
    ).encode()


class DeliveryWorker:
    def __init__(
        self,
        store: DeliveryStore,
        sender: Sender,
        render: Render,
        allow: AllowList,
        clock: Callable[[], datetime],
        *,
        poll_seconds: float,
        timeout: float,
        retry: RetryPolicy,
        max_in_flight: int = 64,
        per_webhook: int = 4,
    ) -> None:
        self._store = store
        self._sender = sender
        self._render = render
        self._allow = allow
        self._clock = clock
        self._poll = poll_seconds
        self._timeout = timeout
        self._retry = retry
        self._max = max_in_flight
        self._per_webhook = per_webhook
        self._lease = timeout + 30.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._by_webhook: dict[str, int] = {}

    def wake(self, *_: Any) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="flowsvc-webhooks")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        with contextlib.suppress(Exception):
            # Leased deliveries not sent: let any replica (or the next start) take them now.
            await self._store.release_deliveries(list(self._in_flight))

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)
            self._wake.clear()
            try:
                await self.claim_and_send()
            except Exception:
                log.warning("webhook delivery beat failed", exc_info=True)

    async def claim_and_send(self) -> int:
        room = self._max - len(self._in_flight)
        if room <= 0:
            return 0
        claimed = await self._store.claim_deliveries(room, self._lease)
        over: list[str] = []
        for d in claimed:
            if d.id in self._in_flight:
                continue
            if self._by_webhook.get(d.webhook_id, 0) >= self._per_webhook:
                over.append(d.id)
                continue
            self._by_webhook[d.webhook_id] = self._by_webhook.get(d.webhook_id, 0) + 1
            self._in_flight[d.id] = asyncio.create_task(self._send(d), name=f"webhook {d.id}")
        if over:
            await self._store.release_deliveries(over)
        return len(claimed) - len(over)

    async def _send(self, d: WebhookDelivery) -> None:
        try:
            await self._attempt(d)
        except Exception:
            log.warning("webhook delivery failed to record", exc_info=True)
        finally:
            self._in_flight.pop(d.id, None)
            self._by_webhook[d.webhook_id] -= 1
            if not self._by_webhook[d.webhook_id]:
                del self._by_webhook[d.webhook_id]
            self._wake.set()  # the session's next delivery may be due now

    async def _attempt(self, d: WebhookDelivery) -> None:
        if not d.secret:
            await self._store.record_failed(d, Outcome(0, "no secret to sign with"), None)
            return
        problem = self._allow.problem(d.url)
        if problem is not None:
            await self._store.record_failed(d, Outcome(0, f"url: {problem}"), None)
            return
        data = await self._render(d)
        if data is None:
            await self._store.record_failed(d, Outcome(0, "the event is gone"), None)
            return
        body = body_of(d.event_type, d.created_at, data)
        stamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": d.id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": signature(d.secret, d.id, stamp, body),
        }
        outcome = await self._sender.post(d.url, headers, body, self._timeout)
        if outcome.ok:
            await self._store.record_delivered(d, outcome.status_code)
            return
        attempts = d.attempts + 1
        delay = self._retry.delay(attempts)
        age = (self._clock() - d.created_at).total_seconds()
        retry_in = delay if age + delay <= self._retry.window else None
        log.info(
            "webhook delivery failed",
            extra={
                "delivery": d.id,
                "status_code": outcome.status_code,
                "attempts": attempts,
                "retry_in": retry_in,
            },
        )
        await self._store.record_failed(d, outcome, retry_in)
