"""Live fan-out of committed events to subscribers, with bounded memory per subscriber."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Iterable

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
        self._ready = asyncio.Event()

    def push(self, event: RunEvent) -> bool:
        """Queue the event; True when this push cut the subscriber off."""
        if self.overflowed or self.closed is not None:
            return False
        cut = len(self.queue) >= self.capacity
        if cut:
            self.overflowed = True
            self.queue.clear()  # memory is released at once; the subscriber resumes by seq
        else:
            self.queue.append(event)
        self._ready.set()
        return cut

    def close(self, reason: str) -> None:
        self.closed = reason
        self._ready.set()

    def shut_down(self) -> None:
        self.shutting_down = True
        self.close("server shutting down")

    async def wait(self) -> None:
        await self._ready.wait()
        self._ready.clear()

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
        for event in events:
            subs = self._subscribers.get(event.session_id)
            if not subs:
                continue
            for sub in subs:
                if sub.push(event):
                    self.cut_off += 1
            if event.seq > self.positions.get(event.session_id, 0):
                self.positions[event.session_id] = event.seq

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
