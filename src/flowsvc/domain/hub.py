"""Live fan-out of committed events to subscribers, with bounded memory per subscriber."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence

from flowsvc.domain.runs import RunEvent


class Subscription:
    """A bounded queue: a subscriber that falls `capacity` events behind is cut off."""

    def __init__(self, session_id: str, capacity: int) -> None:
        self.session_id = session_id
        self.capacity = capacity
        self.queue: deque[RunEvent] = deque()
        self.overflowed = False
        self.closed: str | None = None
        # Closed because the server is going away, not because the session ended: the
        # subscriber is told to resume elsewhere rather than that the stream is complete.
        self.shutting_down = False
        # The waiting subscriber's future, if it waits: one wake-up per publish however many
        # events it brings (not an asyncio.Event: no set/clear and no waiter list).
        self._waiter: asyncio.Future[None] | None = None

    def push_all(self, events: Sequence[RunEvent]) -> bool:
        """Queue the events (of this subscriber's session, in order); True when this cut the
        subscriber off: it would have held more than `capacity`."""
        if self.overflowed or self.closed is not None:
            return False
        cut = len(self.queue) + len(events) > self.capacity
        if cut:
            self.overflowed = True
            self.queue.clear()  # memory is released at once; the subscriber resumes by seq
        else:
            self.queue.extend(events)
        self._wake()
        return cut

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self, reason: str) -> None:
        self.closed = reason
        self._wake()

    def shut_down(self) -> None:
        self.shutting_down = True
        self.close("server shutting down")

    async def wait(self) -> None:
        """Until there is something to take: events, a cut-off or the end."""
        if self.queue or self.overflowed or self.closed is not None:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def drain(self) -> list[RunEvent]:
        items = list(self.queue)
        self.queue.clear()
        return items


class Hub:
    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        # The highest seq published (or replayed) per session with subscribers: where an
        # event feed reads on from when another replica commits to that session.
        self.positions: dict[str, int] = {}
        self.cut_off = 0  # subscribers cut off for falling behind, ever (a metric)
        self._shut_down = False

    def subscribe(self, session_id: str) -> Subscription:
        sub = Subscription(session_id, self.capacity)
        if self._shut_down:
            sub.shut_down()  # a stream that opens while the server drains ends at once too
        self._subscribers[session_id].add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subscribers.get(sub.session_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.session_id]
                self.positions.pop(sub.session_id, None)

    def subscriber_count(self, session_id: str) -> int:
        return len(self._subscribers.get(session_id, ()))

    def start_at(self, session_id: str, seq: int) -> None:
        if session_id in self._subscribers and session_id not in self.positions:
            self.positions[session_id] = seq

    def subscriber_total(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values())

    def watched(self) -> list[str]:
        """Sessions with subscribers here."""
        return list(self._subscribers)

    def publish(self, events: Iterable[RunEvent]) -> None:
        """Queue committed events (or deltas) for their sessions' subscribers: each
        subscriber takes a commit's events in one push and is woken once for them."""
        subscribers = self._subscribers
        by_session: dict[str, list[RunEvent]] = {}
        for event in events:
            if event.session_id in subscribers:
                by_session.setdefault(event.session_id, []).append(event)
        for session_id, batch in by_session.items():
            for sub in subscribers[session_id]:
                if sub.push_all(batch):
                    self.cut_off += 1
            top = max(event.seq for event in batch)
            if top > self.positions.get(session_id, 0):
                self.positions[session_id] = top

    def close_all(self, reason: str) -> None:
        for subs in list(self._subscribers.values()):
            for sub in list(subs):
                sub.close(reason)

    def close_session(self, session_id: str, reason: str) -> None:
        for sub in list(self._subscribers.get(session_id, ())):
            sub.close(reason)

    def shut_down(self) -> None:
        """End every subscription, now and from now on. Idle streams would otherwise hold a
        drain for its whole grace period; their clients resume on another server by seq."""
        self._shut_down = True
        for subs in self._subscribers.values():
            for sub in subs:
                sub.shut_down()
