"""Writing event streams: a subscriber that stops reading is cut off, never waited on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from flowsvc.api.convert import event_bytes
from flowsvc.domain.errors import ResourceExhausted
from flowsvc.domain.runs import RunEvent


async def send_events(context: Any, events: AsyncIterator[RunEvent], write_timeout: float) -> None:
    last = 0
    session_id = ""
    try:
        async for event in events:
            session_id = event.session_id
            try:
                await asyncio.wait_for(context.write(event_bytes(event)), write_timeout)
            except TimeoutError as exc:
                raise ResourceExhausted(
                    f"subscriber stopped reading for {write_timeout:g}s; "
                    f"resume with after_seq={last}",
                    subject=f"sessions/{session_id}",
                    limit="subscriber_write_timeout",
                ) from exc
            if event.seq:
                last = event.seq
    finally:
        await events.aclose()  # type: ignore[attr-defined]
