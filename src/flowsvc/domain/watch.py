"""Following a session's events: replay what is committed, then go live, with no gap and
no duplicate at the seam."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from flowsvc.domain.errors import ResourceExhausted, Unavailable
from flowsvc.domain.hub import Hub
from flowsvc.domain.ports import RunStore
from flowsvc.domain.runs import EventType, RunEvent

REPLAY_BATCH = 500


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
    """Events with seq > after_seq, then live ones. With run_id, only that run's events, and
    the stream ends when the run stops (finishes or waits for input). `stopped` says whether
    the run (or, without run_id, the session) has nothing more to send."""
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
            batch = await store.events_after(session_id, last, run_id, REPLAY_BATCH)
            for event in batch:
                if sub.shutting_down:
                    raise _shutting_down(last)
                last = event.seq
                yield event
                # In the record, a run that waited for input may have gone on since.
                if run_id and event.type.ends_run:
                    return
                paused = event.type is EventType.INPUT_REQUIRED
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
            for event in await store.events_after(session_id, last, run_id, REPLAY_BATCH):
                yield event
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
            for event in sub.drain():
                if event.type is EventType.STEP_DELTA:
                    if not run_id or event.run_id == run_id:
                        yield event
                    continue
                if event.seq <= last:
                    continue
                reading = event.seq > last + 1
                while reading:
                    missed = await store.events_after(session_id, last, run_id, REPLAY_BATCH)
                    reading = len(missed) == REPLAY_BATCH
                    for earlier in missed:
                        if earlier.seq >= event.seq:
                            reading = False
                            break
                        last = earlier.seq
                        yield earlier
                        if run_id and earlier.type.ends_run_stream:
                            return
                last = event.seq
                if run_id and event.run_id != run_id:
                    continue
                yield event
                if run_id and event.type.ends_run_stream:
                    return
            if sub.shutting_down:
                raise _shutting_down(last)
            if sub.closed is not None:
                return
    finally:
        hub.unsubscribe(sub)
