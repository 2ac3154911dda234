"""Following a session's events: replay what is committed, then go live, with no gap and
no duplicate at the seam."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from flowsvc.domain.errors import ResourceExhausted, Unavailable
from flowsvc.domain.hub import Hub
from flowsvc.domain.ports import RunStore
from flowsvc.domain.runs import EventType, RunEvent

REPLAY_BATCH = 500

EventBatch = list[RunEvent]  # events read or published together, streamed in one go


def _shutting_down(last: int) -> Unavailable:
    return Unavailable(f"server shutting down; resume with after_seq={last}")


async def follow(
    store: RunStore,
    hub: Hub,
    session_id: str,
    after_seq: int,
    *,
    run_id: str = "",
    stopped: Callable[[], Awaitable[bool]],
) -> AsyncIterator[RunEvent]:
    """The events of `follow_batches`, one by one."""
    async for batch in follow_batches(
        store, hub, session_id, after_seq, run_id=run_id, stopped=stopped
    ):
        for event in batch:
            yield event


async def follow_batches(
    store: RunStore,
    hub: Hub,
    session_id: str,
    after_seq: int,
    *,
    run_id: str = "",
    stopped: Callable[[], Awaitable[bool]],
) -> AsyncIterator[EventBatch]:
    """Events with seq > after_seq, then live ones, in lists: what was read or published
    together comes in one list, so that a stream writes it in one go (no hop per event).
    With run_id, only that run's events, and the stream ends when the run stops (finishes or
    waits for input). `stopped` says whether the run (or, without run_id, the session) has
    nothing more to send. The consumer asks for the next list once it has sent this one: a
    shutdown ends the stream between lists, with the seq to resume after."""
    # Subscribe before reading the store: an event committed after the read is published
    # after this point, so it arrives live; one committed before is in the replay.
    sub = hub.subscribe(session_id)
    # `last` is a position in the session's seqs. Events are published as they commit, on
    # this replica or (through the event feed) another; whenever one arrives past last + 1,
    # what lies between is committed and is read from the store first: no gap, in any order
    # of arrival, and anything already seen is skipped.
    last = after_seq
    paused = False  # the last event replayed says the run waits for input
    try:
        while True:
            if sub.shutting_down:
                raise _shutting_down(last)
            batch = await store.events_after(session_id, last, run_id, REPLAY_BATCH)
            part, ended = _until_end(batch, run_id, ends=lambda kind: kind.ends_run)
            if part:
                last = part[-1].seq
                paused = part[-1].type is EventType.INPUT_REQUIRED
                yield part
            # In the record, a run that waited for input may have gone on since.
            if ended:
                return
            if len(batch) < REPLAY_BATCH:
                break
        if run_id and paused:
            return  # it waits for input now: nothing after it is committed
        # Only a first subscriber sets where this replica's event feed reads on from: moving
        # it past what earlier subscribers have received would make the feed skip it.
        hub.start_at(session_id, last)
        if not sub.queue and await stopped():
            # Whatever it sent before stopping is committed: one more read catches events
            # committed between the replay and the check.
            rest = await store.events_after(session_id, last, run_id, REPLAY_BATCH)
            if rest:
                yield rest
            return
        while True:
            await sub.wait()
            if sub.overflowed:
                raise ResourceExhausted(
                    f"subscriber fell more than {sub.capacity} events behind; "
                    f"resume with after_seq={last}",
                    subject=f"sessions/{session_id}",
                    limit="subscriber_queue",
                )
            out: list[RunEvent] = []
            for event in sub.drain():
                if event.type is EventType.STEP_DELTA:
                    if not run_id or event.run_id == run_id:
                        out.append(event)
                    continue
                if event.seq <= last:
                    continue
                if event.seq > last + 1:
                    # A gap: what lies between is committed; it goes first, read from the store.
                    missed, ended = await _missed(store, session_id, last, event.seq, run_id)
                    out.extend(missed)
                    if missed:
                        last = missed[-1].seq
                    if ended:
                        yield out
                        return
                last = event.seq
                if run_id and event.run_id != run_id:
                    continue
                out.append(event)
                if run_id and event.type.ends_run_stream:
                    yield out
                    return
            if out:
                yield out
            if sub.shutting_down:
                raise _shutting_down(last)
            if sub.closed is not None:
                return
    finally:
        hub.unsubscribe(sub)


def _until_end(
    events: list[RunEvent], run_id: str, *, ends: Callable[[EventType], bool]
) -> tuple[list[RunEvent], bool]:
    """The events up to and including the first that ends a run's stream (`ends`), and
    whether there was one; without run_id, all of them (a session's stream goes on)."""
    if not run_id:
        return events, False
    for i, event in enumerate(events):
        if ends(event.type):
            return events[: i + 1], True
    return events, False


async def _missed(
    store: RunStore, session_id: str, last: int, upto: int, run_id: str
) -> tuple[list[RunEvent], bool]:
    """The committed events after `last` and before `upto` (a gap in what was published), up
    to the first that ends the run's stream; and whether one did."""
    found: list[RunEvent] = []
    while True:
        batch = await store.events_after(session_id, last, run_id, REPLAY_BATCH)
        earlier = [e for e in batch if e.seq < upto]
        part, ended = _until_end(earlier, run_id, ends=lambda kind: kind.ends_run_stream)
        found.extend(part)
        if ended:
            return found, True
        if len(earlier) < len(batch) or len(batch) < REPLAY_BATCH:
            return found, False
        last = batch[-1].seq
