"""The sessions this replica holds: each one leased in the database, with its fencing epoch.

A session is changed (and its runs executed) only by the replica holding its lease. The
registry claims a lease when a session is first needed here, shares the held session with
every local user, and gives the lease up once the last user is done; the release commits
through the journal, fenced like any other write. A renewal thread keeps the leases alive
and reports the ones another replica took over, which the engine then abandons.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from flowsvc.domain.errors import NotFound, Unavailable
from flowsvc.domain.ports import Leases
from flowsvc.domain.runs import Journal, Session

log = logging.getLogger("flowsvc.leases")


class HeldElsewhere(Unavailable):
    """Another live replica holds the session's lease (and kept it past the wait): the caller
    may try again, here or elsewhere."""

    def __init__(self, session: Session) -> None:
        super().__init__(f"session {session.id} is busy on another replica; try again")
        self.session = session


@dataclass
class SessionState:
    session: Session
    epoch: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    deleted: bool = False
    # Set once the lease is being given up: users arriving meanwhile wait, then claim anew.
    releasing: asyncio.Future[None] | None = None
    # False until a new session's first journal is committed: there is no row to renew yet.
    stored: bool = True
    # When its last user let it go (loop time): it is kept keep_seconds after that.
    last_used: float = 0.0
    # Every run the database holds for the session is known here (running here, or none):
    # a new run may start at once without asking the database what goes first.
    runs_known: bool = False


class SessionRegistry:
    def __init__(
        self,
        leases: Leases,
        record: Callable[[Journal], asyncio.Future[None]],
        *,
        lease_seconds: float,
    ) -> None:
        self._leases = leases
        self._record = record
        self.lease_seconds = lease_seconds
        self.states: dict[str, SessionState] = {}
        self._claiming: dict[str, asyncio.Future[None]] = {}
        # Called on the loop with a session another replica took over.
        self.on_lost: Callable[[SessionState], None] | None = None
        # A session is kept this long after its last user: the next turn of a conversation
        # then needs no claim (a write transaction) and no release. Other replicas wait at
        # most 1.25x this long for it (their queued runs are claimed once it is given up).
        self.keep_seconds = min(1.0, lease_seconds / 4)
        # Sessions without users, oldest use first, and the one timer that gives them up.
        self._idle_states: dict[str, SessionState] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()
        self._said_stalled_failure = False

    # -- holding --------------------------------------------------------------------------

    async def hold(self, org: str, session_id: str, *, wait: float = 0.0) -> SessionState:
        """The session, leased to this replica; waits up to `wait` seconds for another
        replica to let it go, then raises HeldElsewhere."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        pause = 0.02
        while True:
            state = self.states.get(session_id)
            if state is not None:
                if state.releasing is not None:
                    await asyncio.shield(state.releasing)
                    continue
                if state.session.organisation_id != org or state.deleted:
                    raise NotFound("session", session_id)
                return state
            pending = self._claiming.get(session_id)
            if pending is not None:
                await asyncio.shield(pending)
                continue
            claiming = self._claiming[session_id] = loop.create_future()
            try:
                claim = await self._leases.claim_session(org, session_id)
            finally:
                del self._claiming[session_id]
                claiming.set_result(None)
            if claim.session is None:
                raise NotFound("session", session_id)
            if claim.epoch:
                state = SessionState(claim.session, claim.epoch)
                self.states[session_id] = state
                return state
            if loop.time() >= deadline:
                raise HeldElsewhere(claim.session)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)

    def adopt(self, session: Session) -> SessionState:
        """A session this replica just made: leased to it from its first write (epoch 1)."""
        state = SessionState(session, 1, stored=False, runs_known=True)
        self.states[session.id] = state
        return state

    @asynccontextmanager
    async def using(
        self, org: str, session_id: str, *, wait: float = 0.0
    ) -> AsyncIterator[SessionState]:
        state = await self.hold(org, session_id, wait=wait)
        state.users += 1
        try:
            yield state
        finally:
            self.release(state)

    def release(self, state: SessionState) -> None:
        """One user less; once the last one is done the lease is given up (after a short
        keep, and after its writes are committed)."""
        state.users -= 1
        if self._idle(state):
            loop = asyncio.get_running_loop()
            state.last_used = loop.time()
            sid = state.session.id
            self._idle_states.pop(sid, None)  # to the end: the order stays that of last use
            self._idle_states[sid] = state
            if self._sweep is None:
                self._sweep = loop.call_later(self.keep_seconds, self._give_up_idle)

    def _idle(self, state: SessionState) -> bool:
        return (
            state.users <= 0
            and not state.lock.locked()
            and state.releasing is None
            and self.states.get(state.session.id) is state
        )

    def _give_up_idle(self) -> None:
        """Give up every session kept its time, together: their releases are journals of
        one loop turn, so they share a commit. (A timer per session made each release a
        commit of its own: one caller's new session a run was two commits a run.) The timer
        then comes back for the next one due, no sooner than a quarter of the keep."""
        self._sweep = None
        if self._stop.is_set():
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        due_before = now - self.keep_seconds
        for sid, state in list(self._idle_states.items()):
            if not self._idle(state):
                del self._idle_states[sid]  # used again: its last user puts it back
            elif state.last_used <= due_before:
                del self._idle_states[sid]
                self._give_up(state)
            else:
                wait = max(state.last_used - due_before, self.keep_seconds / 4)
                self._sweep = loop.call_later(wait, self._give_up_idle)
                return

    def _give_up(self, state: SessionState) -> None:
        try:
            future = self._record(Journal(session=state.session, epoch=state.epoch, release=True))
        except Exception:
            # Not given up here, then: no longer renewed, the lease runs out for others to
            # claim. (The sweep goes on with the other sessions due.)
            log.warning("lease release not recorded", exc_info=True,
                        extra={"session_id": state.session.id})
            self.forget(state)
            return
        done = state.releasing = asyncio.get_running_loop().create_future()

        def released(f: asyncio.Future[None]) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.info("lease release not written", extra={"session_id": state.session.id})
            if self.states.get(state.session.id) is state:
                del self.states[state.session.id]
            done.set_result(None)

        future.add_done_callback(released)

    def forget(self, state: SessionState) -> None:
        """The lease is gone (taken over, or the session deleted): drop the local record."""
        if self.states.get(state.session.id) is state:
            del self.states[state.session.id]

    # -- renewal --------------------------------------------------------------------------

    def start_renewal(self, loop: asyncio.AbstractEventLoop) -> None:
        interval = max(self.lease_seconds / 4, 0.05)

        def renew_forever() -> None:
            while not self._stop.wait(interval):
                self._renew(loop)
                self._end_stalled_writes()  # after: the leases come first

        self._renewer = threading.Thread(target=renew_forever, name="flowsvc-leases", daemon=True)
        self._renewer.start()

    def _renew(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            held = self._snapshot()
            if not held:
                return
            kept = self._leases.renew([sid for sid, _ in held])
        except Exception:
            log.warning("lease renewal failed", exc_info=True)
            return
        lost = [(sid, epoch) for sid, epoch in held if sid not in kept]
        if lost:
            loop.call_soon_threadsafe(self._lost, lost)

    def _end_stalled_writes(self) -> None:
        try:
            ended = self._leases.end_stalled_writes()
        except Exception:
            # Said once (a role that may not end the others' connections says so every time).
            if not self._said_stalled_failure:
                self._said_stalled_failure = True
                log.warning("could not end stalled writes", exc_info=True)
            return
        self._said_stalled_failure = False
        if ended:
            log.warning(
                "ended writes stalled mid-statement (a replica frozen or cut off)",
                extra={"count": ended},
            )

    def _snapshot(self) -> list[tuple[str, int]]:
        while True:
            try:
                return [(sid, s.epoch) for sid, s in list(self.states.items()) if s.stored]
            except RuntimeError:
                continue  # changed on the loop while copied: try again

    def _lost(self, lost: list[tuple[str, int]]) -> None:
        for sid, epoch in lost:
            state = self.states.get(sid)
            if state is None or state.epoch != epoch or state.releasing is not None:
                continue  # released or claimed anew since the renewal looked
            log.warning("lease lost to another replica", extra={"session_id": sid})
            self.forget(state)
            if self.on_lost is not None:
                self.on_lost(state)

    def stop_renewal(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
