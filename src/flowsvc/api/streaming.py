"""Writing event streams: a subscriber that stops reading is cut off, never waited on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from flowsvc.api.convert import event_bytes
from flowsvc.api.guard import messages_sent
from flowsvc.domain.errors import ResourceExhausted
from flowsvc.domain.runs import RunEvent

_STALLED = "flowsvc: subscriber stopped reading"

# A list of events as the messages of a stream: each message's bytes and the index in the
# list just past its last event.
Encode = Callable[[list[RunEvent]], list[tuple[bytes, int]]]


def one_per_message(events: list[RunEvent]) -> list[tuple[bytes, int]]:
    """A RunEvent per message (WatchSession, WatchRun, StreamRunFlow)."""
    return [(event_bytes(e), i) for i, e in enumerate(events, 1)]


async def send_events(
    context: Any, events: AsyncIterator[RunEvent], write_timeout: float, after_seq: int = 0
) -> None:
    """`send_batches` for a stream of single events."""

    async def singles() -> AsyncIterator[list[RunEvent]]:
        try:
            async for event in events:
                yield [event]
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    await send_batches(context, singles(), write_timeout, after_seq)


async def send_batches(
    context: Any,
    batches: AsyncIterator[list[RunEvent]],
    write_timeout: float,
    after_seq: int = 0,
    encode: Encode = one_per_message,
) -> None:
    """Write the messages `encode` makes of each list (from events encoded once for all
    subscribers) in one tight loop; a subscriber that makes no progress for `write_timeout`
    while a write waits on it ends the stream with RESOURCE_EXHAUSTED and the seq to resume
    after: that of the last event of the last message written whole.

    One timer per stream watches the writes (not a task and a timer per write: a stream to
    hundreds of subscribers writes tens of thousands of messages a second); the writes count
    as sent messages in bulk, per list."""
    loop = asyncio.get_running_loop()
    stream = asyncio.current_task()
    write = context.write
    count_sent = messages_sent()
    last = after_seq  # the seq of the last event written whole
    session_id = ""
    batch: list[RunEvent] = []
    messages: list[tuple[bytes, int]] = []
    written = 0  # writes completed, ever: the timer's measure of progress
    counted = 0  # of those, counted as sent messages (per list, and the rest at the end)
    batch_start = 0  # `written` when the current list began
    writing = False
    stalled = False
    seen, seen_at = -1, loop.time()
    timer: asyncio.TimerHandle | None = None

    def watch() -> None:
        nonlocal timer, stalled, seen, seen_at
        now = loop.time()
        if not writing or written != seen:
            seen, seen_at = written, now
        elif now - seen_at >= write_timeout:
            stalled = True
            if stream is not None:
                stream.cancel(_STALLED)
            return
        timer = loop.call_later(write_timeout / 4, watch)

    timer = loop.call_later(write_timeout / 4, watch)
    try:
        async for batch in batches:
            if not batch:
                continue
            session_id = batch[0].session_id
            batch_start = written
            writing = True
            messages = encode(batch)
            for data, _ in messages:
                await write(data)
                written += 1
            writing = False
            count_sent(written - counted)
            counted = written
            last = _last_seq(batch, last)
        batch = []
    except asyncio.CancelledError as exc:
        if not stalled or stream is None:
            raise
        stream.uncancel()
        whole = written - batch_start  # messages of this list written whole
        last = _last_seq(batch[: messages[whole - 1][1]], last) if whole else last
        raise ResourceExhausted(
            f"subscriber stopped reading for {write_timeout:g}s; resume with after_seq={last}",
            subject=f"sessions/{session_id}",
            limit="subscriber_write_timeout",
        ) from exc
    finally:
        if written > counted:
            count_sent(written - counted)  # a stream that ended in the middle of a list
        if timer is not None:
            timer.cancel()
        await batches.aclose()  # type: ignore[attr-defined]


def _last_seq(events: list[RunEvent], last: int) -> int:
    """The seq of the last event with one (deltas have none), else `last`."""
    for event in reversed(events):
        if event.seq:
            return event.seq
    return last
