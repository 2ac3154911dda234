"""Writing event streams: a subscriber that stops reading is cut off, never waited on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from flowsvc.api.convert import event_bytes
from flowsvc.domain.errors import ResourceExhausted
from flowsvc.domain.runs import RunEvent

_STALLED = "flowsvc: subscriber stopped reading"


async def send_events(
    context: Any, events: AsyncIterator[RunEvent], write_timeout: float, after_seq: int = 0
) -> None:
    """Write each event; a write that waits `write_timeout` on a client that stopped reading
    ends the stream with RESOURCE_EXHAUSTED and the seq to resume after.

    One timer per stream watches the writes (not a task and a timer per write: a stream to
    hundreds of subscribers writes tens of thousands of events a second)."""
    last = after_seq
    session_id = ""
    loop = asyncio.get_running_loop()
    stream = asyncio.current_task()
    writing_since: float | None = None
    stalled = False
    timer: asyncio.TimerHandle | None = None

    def watch() -> None:
        nonlocal timer, stalled
        if writing_since is not None and loop.time() - writing_since >= write_timeout:
            stalled = True
            if stream is not None:
                stream.cancel(_STALLED)
            return
        timer = loop.call_later(write_timeout / 4, watch)

    timer = loop.call_later(write_timeout / 4, watch)
    try:
        async for event in events:
            session_id = event.session_id
            writing_since = loop.time()
            await context.write(event_bytes(event))
            writing_since = None
            if event.seq:
                last = event.seq
    except asyncio.CancelledError as exc:
        if not stalled or stream is None:
            raise
        stream.uncancel()
        raise ResourceExhausted(
            f"subscriber stopped reading for {write_timeout:g}s; resume with after_seq={last}",
            subject=f"sessions/{session_id}",
            limit="subscriber_write_timeout",
        ) from exc
    finally:
        if timer is not None:
            timer.cancel()
        await events.aclose()  # type: ignore[attr-defined]
