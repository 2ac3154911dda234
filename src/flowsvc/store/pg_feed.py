"""Events committed by other replicas, delivered to this replica's subscribers (PostgreSQL).

Events stay rows keyed by (session, seq); a notification only says which sessions changed,
and the subscribers' replica then reads the rows after what it has published. NOTIFY takes
a cluster-wide lock at commit, so it is never sent inside the step transactions nor once
per event: each replica sends at most one coalesced notification every FLUSH_SECONDS, on one
channel, naming the sessions it committed to. Listening is on a dedicated connection; a poll
every `poll_seconds` compares each watched session's last_seq with what was published, so a
lost notification (a database restart, a dropped connection) delays events, never drops them.
STEP_DELTA tokens are not stored and stay on the replica running the step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg

from flowsvc.domain.hub import Hub
from flowsvc.domain.ports import RunStore

log = logging.getLogger("flowsvc.feed")

CHANNEL = "flowsvc_events"
FLUSH_SECONDS = 0.005
MAX_PAYLOAD = 7900  # NOTIFY payloads must stay under 8000 bytes
READ_BATCH = 500


class PostgresEventFeed:
    def __init__(
        self, conninfo: str, owner_id: str, hub: Hub, store: RunStore, poll_seconds: float = 1.0
    ) -> None:
        self._conninfo = conninfo
        self._owner = owner_id
        self._hub = hub
        self._store = store
        self._poll_seconds = poll_seconds
        self._touched: set[str] = set()
        self._wake_notifier = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._reading: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self.connected = False

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._notify_loop(), name="flowsvc-feed-notify"),
            asyncio.create_task(self._listen_loop(), name="flowsvc-feed-listen"),
            asyncio.create_task(self._poll_loop(), name="flowsvc-feed-poll"),
        ]

    async def close(self) -> None:
        for task in [*self._tasks, *self._reading.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._reading.values(), return_exceptions=True)

    def committed(self, session_ids: set[str]) -> None:
        """Called after each local commit: other replicas hear of it shortly."""
        if session_ids:
            self._touched |= session_ids
            self._wake_notifier.set()

    # -- sending ----------------------------------------------------------------------------

    async def _notify_loop(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    while True:
                        await self._wake_notifier.wait()
                        await asyncio.sleep(FLUSH_SECONDS)  # coalesce what commits meanwhile
                        self._wake_notifier.clear()
                        touched, self._touched = self._touched, set()
                        payload = f"{self._owner}|{','.join(sorted(touched))}"
                        if len(payload) > MAX_PAYLOAD:
                            payload = f"{self._owner}|*"
                        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("event notifier lost its connection; reconnecting", exc_info=True)
                await asyncio.sleep(0.5)

    # -- receiving --------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.connected = True
                    self._catch_up(self._hub.watched())  # whatever was missed while away
                    async for note in conn.notifies():
                        self._heard(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("event listener lost its connection; reconnecting", exc_info=True)
            self.connected = False
            await asyncio.sleep(0.5)

    def _heard(self, payload: str) -> None:
        sender, _, sessions = payload.partition("|")
        if sender == self._owner:
            return  # this replica's own commits were published as they committed
        watched = self._hub.watched()
        if sessions == "*":
            self._catch_up(watched)
        else:
            named = set(sessions.split(","))
            self._catch_up([s for s in watched if s in named])

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            watched = self._hub.watched()
            if not watched:
                continue
            try:
                latest = await self._store.last_seqs(watched)
            except Exception:
                log.warning("event poll failed", exc_info=True)
                continue
            self._catch_up(
                [s for s, seq in latest.items() if seq > self._hub.positions.get(s, 0)]
            )

    def _catch_up(self, session_ids: list[str]) -> None:
        for session_id in session_ids:
            if session_id in self._reading:
                self._again.add(session_id)  # read once more when the read under way ends
                continue
            self._reading[session_id] = asyncio.create_task(self._read(session_id))

    async def _read(self, session_id: str) -> None:
        try:
            while True:
                self._again.discard(session_id)
                after = self._hub.positions.get(session_id, 0)
                found = await self._store.events_after(session_id, after, "", READ_BATCH)
                self._hub.publish(found)
                if len(found) < READ_BATCH and session_id not in self._again:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("event read failed", exc_info=True, extra={"session_id": session_id})
        finally:
            with contextlib.suppress(KeyError):
                del self._reading[session_id]


def conninfo_of(sync_url: Any) -> str:
    """A libpq connection string from the SQLAlchemy URL."""
    from sqlalchemy.engine import make_url

    url = make_url(sync_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)
