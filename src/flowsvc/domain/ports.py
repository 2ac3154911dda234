"""The small async interfaces the domain needs from a store. Backends implement them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from flowsvc.domain.model import ApiKey, FlowVersion, LiveFlow
from flowsvc.domain.paging import Page
from flowsvc.domain.runs import FlowRun, Journal, Message, RunEvent, Session, SessionStep


@dataclass
class SessionClaim:
    """The outcome of claiming a session's lease: `session` None when there is no such
    session; `epoch` 0 when another live replica holds it."""

    session: Session | None
    epoch: int


class Leases(Protocol):
    """Which replica may change a session and run its runs (the engine's claim port)."""

    owner_id: str
    # False when one process owns the database (SQLite): its own memory then knows every
    # active run, and counting in the database would only cost a query per run.
    shared: bool

    async def claim_session(self, org: str, session_id: str) -> SessionClaim: ...

    async def claimable(self, limit: int) -> list[tuple[str, str]]:
        """(organisation, session) with runs to execute and no live owner."""
        ...

    def renew(self, session_ids: list[str]) -> set[str]:
        """Blocking, from a thread: extend these leases; returns those still held."""
        ...

    def end_stalled_writes(self) -> int:
        """Blocking, from a thread: end writes of any replica stalled mid-statement past the
        idle limit (their locks held against claims); returns how many."""
        ...

    async def active_runs(self, session_id: str) -> list[FlowRun]: ...

    async def active_runs_by_org(self) -> dict[str, int]: ...

    async def active_runs_of_flow(self, org: str, flow_id: str) -> list[FlowRun]: ...

    async def insert_queued_run(self, run: FlowRun, *, only_if_idle: bool) -> bool:
        """Insert a QUEUED run; with only_if_idle, only when the session has no run going."""
        ...

    async def request_cancel(self, org: str, run_id: str) -> bool: ...

    async def cancel_requests(self) -> list[str]: ...

    async def release_all(self) -> None: ...


class EventFeed(Protocol):
    """Wakes subscribers of this replica when another replica commits events."""

    def start(self) -> None: ...

    async def close(self) -> None: ...


class FlowStore(Protocol):
    async def create_flow(
        self, flow: LiveFlow, first_version: FlowVersion | None, request_id: str
    ) -> LiveFlow:
        """Insert atomically; with a request_id already used, return that flow instead."""

    async def get_flow(self, org: str, flow_id: str) -> LiveFlow | None: ...

    async def list_flows(self, org: str, page: Page) -> list[LiveFlow]:
        """Newest first, at most page.size + 1 (the extra one says more exist)."""

    async def update_flow(
        self, org: str, flow_id: str, changes: Mapping[str, Any]
    ) -> LiveFlow | None: ...

    async def delete_flow(self, org: str, flow_id: str) -> bool: ...

    async def add_version(
        self, org: str, flow_id: str, make: Callable[[int], FlowVersion]
    ) -> FlowVersion | None:
        """Allocate the next version number, insert make(number), make it current."""

    async def get_version(self, org: str, version_id: str) -> FlowVersion | None: ...

    async def get_version_number(
        self, org: str, flow_id: str, number: int
    ) -> FlowVersion | None: ...

    async def list_versions(self, org: str, flow_id: str, page: Page) -> list[FlowVersion]: ...

    async def load_versions(self, version_ids: set[str]) -> dict[str, FlowVersion]:
        """Versions by id, of any organisation: for records that already belong to one."""
        ...


class KeyStore(Protocol):
    async def add_key(self, key: ApiKey) -> None: ...

    async def get_key(self, key_id: str) -> ApiKey | None: ...

    async def list_keys(self, org: str) -> list[ApiKey]:
        """Every key, or one organisation's when org is given."""
        ...

    async def revoke_key(self, key_id: str, when: datetime) -> bool: ...

    async def touch_key(self, key_id: str, when: datetime) -> None: ...


class RunStore(Protocol):
    def record(self, journal: Journal) -> asyncio.Future[None]:
        """Queue the journal for the next group commit and return a future that resolves
        once it is committed. The records are copied now: the caller may keep changing them."""
        ...

    async def get_session(self, org: str, session_id: str) -> Session | None:
        """The session without its conversation (messages None; message_count is right)."""
        ...

    async def session_by_request(self, org: str, request_id: str) -> Session | None:
        """As get_session."""
        ...

    async def session_messages(self, session_id: str) -> list[Message]:
        """The session's conversation, oldest first (run_id and position set)."""
        ...

    async def last_step(
        self, session_id: str, status: str = "", excluding: Collection[str] = ()
    ) -> SessionStep | None:
        """The session's latest step (with that status; none of `excluding`): read from the
        end, not the session's whole history."""
        ...

    async def session_with_steps(
        self, org: str, session_id: str
    ) -> tuple[Session, list[SessionStep]] | None:
        """The session with its conversation, and its steps in order."""
        ...

    async def step_by_input_request(
        self, session_id: str, request_id: str
    ) -> SessionStep | None: ...

    async def list_sessions(
        self, org: str, flow_id: str, status: str, page: Page
    ) -> list[Session]:
        """With their conversations."""
        ...

    async def delete_session(self, org: str, session_id: str) -> bool: ...

    async def get_run(self, org: str, run_id: str) -> FlowRun | None: ...

    async def run_by_request(self, org: str, request_id: str) -> FlowRun | None: ...

    async def list_runs(
        self, org: str, flow_id: str, session_id: str, page: Page, schedule_id: str = ""
    ) -> list[FlowRun]: ...

    async def session_runs(self, org: str, session_id: str) -> list[FlowRun]:
        """Every run of the session, oldest first, without their steps."""
        ...

    async def run_steps(self, run_id: str) -> list[SessionStep]: ...

    async def events_after(
        self, session_id: str, after_seq: int, run_id: str, limit: int
    ) -> list[RunEvent]: ...

    async def last_seqs(self, session_ids: list[str]) -> dict[str, int]: ...

    async def sessions_expired_by(self, when: datetime, limit: int) -> list[tuple[str, str]]:
        """(organisation, session id) of sessions past expiry and not yet EXPIRED."""
        ...
