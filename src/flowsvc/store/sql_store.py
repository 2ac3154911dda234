"""The SQLModel-backed store: implements the domain's store interfaces."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Select

from flowsvc.domain.model import ApiKey, FlowVersion, LiveFlow
from flowsvc.domain.paging import Page
from flowsvc.store.database import Database
from flowsvc.store.graph_codec import graph_from_json, graph_to_json
from flowsvc.store.tables import (
    ApiKeyRow,
    EvalJobRow,
    FlowRunRow,
    FlowVersionRow,
    LiveFlowRow,
    RunEventRow,
    SessionMessageRow,
    SessionRow,
    SessionStepRow,
)
from flowsvc.store.threaded_reads import Reader

FLOW_CACHE_SECONDS = 1.0
FLOW_CACHE_ENTRIES = 10_000

sessions_table = SessionRow.__table__  # type: ignore[attr-defined]
steps_table = SessionStepRow.__table__  # type: ignore[attr-defined]
events_table = RunEventRow.__table__  # type: ignore[attr-defined]
messages_table = SessionMessageRow.__table__  # type: ignore[attr-defined]
runs_table = FlowRunRow.__table__  # type: ignore[attr-defined]
jobs_table = EvalJobRow.__table__  # type: ignore[attr-defined]
flows = LiveFlowRow.__table__  # type: ignore[attr-defined]
versions = FlowVersionRow.__table__  # type: ignore[attr-defined]
api_keys = ApiKeyRow.__table__  # type: ignore[attr-defined]


def _version(row: Row[Any]) -> FlowVersion:
    return FlowVersion(
        id=row.id,
        flow_id=row.flow_id,
        organisation_id=row.organisation_id,
        version=row.version,
        graph=graph_from_json(row.graph),
        created_at=row.created_at,
    )


def _flow(row: Row[Any], current: FlowVersion | None) -> LiveFlow:
    return LiveFlow(
        id=row.id,
        organisation_id=row.organisation_id,
        name=row.name,
        description=row.description,
        created_at=row.created_at,
        updated_at=row.updated_at,
        auto_eval_flow_ids=tuple(row.auto_eval_flow_ids),
        current_version=current,
        request_digest=row.request_digest or "",
    )


def _key(row: Row[Any]) -> ApiKey:
    return ApiKey(
        id=row.id,
        organisation_id=row.organisation_id,
        salt=row.salt,
        secret_hash=row.secret_hash,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def _version_values(version: FlowVersion) -> dict[str, Any]:
    return {
        "id": version.id,
        "flow_id": version.flow_id,
        "organisation_id": version.organisation_id,
        "version": version.version,
        "graph": graph_to_json(version.graph),
        "created_at": version.created_at,
    }


def newest_first(query: Select[Any], table: Any, page: Page) -> Select[Any]:
    """Every list: newest first by (created_at, id), after the page's cursor, one extra row."""
    if page.after is not None:
        query = query.where(
            tuple_(table.c.created_at, table.c.id) < tuple_(page.after.created_at, page.after.id)
        )
    return query.order_by(table.c.created_at.desc(), table.c.id.desc()).limit(page.size + 1)


class SqlStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        # Versions are immutable, so a version read once can be served from memory.
        self._versions: dict[str, FlowVersion] = {}
        self._numbered: dict[tuple[str, int], FlowVersion] = {}
        # Flows are read on every run. This process's own writes invalidate an entry at once;
        # another process sharing the database is seen within FLOW_CACHE_SECONDS.
        self._flows: dict[str, tuple[float, LiveFlow]] = {}

    # -- flows -------------------------------------------------------------------------

    async def create_flow(
        self, flow: LiveFlow, first_version: FlowVersion | None, request_id: str
    ) -> LiveFlow:
        try:
            async with self.db.write() as conn:
                await conn.execute(
                    flows.insert().values(
                        id=flow.id,
                        organisation_id=flow.organisation_id,
                        name=flow.name,
                        description=flow.description,
                        current_version_id=first_version.id if first_version else None,
                        auto_eval_flow_ids=list(flow.auto_eval_flow_ids),
                        request_id=request_id or None,
                        request_digest=flow.request_digest,
                        created_at=flow.created_at,
                        updated_at=flow.updated_at,
                    )
                )
                if first_version is not None:
                    await conn.execute(versions.insert().values(**_version_values(first_version)))
        except IntegrityError:
            if not request_id:
                raise
            existing = await self._flow_by_request(flow.organisation_id, request_id)
            if existing is None:
                raise
            return existing
        return flow

    async def _flow_by_request(self, org: str, request_id: str) -> LiveFlow | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(flows).where(
                        flows.c.organisation_id == org, flows.c.request_id == request_id
                    )
                )
            ).first()
            return None if row is None else (await self._with_versions(conn, [row]))[0]

    async def _with_versions(
        self, conn: Reader, rows: Sequence[Row[Any]]
    ) -> list[LiveFlow]:
        wanted = {r.current_version_id for r in rows if r.current_version_id}
        missing = [v for v in wanted if v not in self._versions]
        if missing:
            for vrow in await conn.execute(select(versions).where(versions.c.id.in_(missing))):
                self._versions[vrow.id] = _version(vrow)
        return [
            _flow(r, self._versions.get(r.current_version_id) if r.current_version_id else None)
            for r in rows
        ]

    async def get_flow(self, org: str, flow_id: str) -> LiveFlow | None:
        cached = self._flows.get(flow_id)
        if cached is not None and time.monotonic() - cached[0] < FLOW_CACHE_SECONDS:
            flow = cached[1]
            return replace(flow, sessions=[]) if flow.organisation_id == org else None
        async with self.db.read() as conn:
            row = (await conn.execute(select(flows).where(flows.c.id == flow_id))).first()
            if row is None:
                return None
            flow = (await self._with_versions(conn, [row]))[0]
        self._flows[flow_id] = (time.monotonic(), flow)
        if len(self._flows) > FLOW_CACHE_ENTRIES:
            self._flows.pop(next(iter(self._flows)))
        return replace(flow, sessions=[]) if flow.organisation_id == org else None

    async def list_flows(self, org: str, page: Page) -> list[LiveFlow]:
        query = newest_first(select(flows).where(flows.c.organisation_id == org), flows, page)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
            return await self._with_versions(conn, rows)

    async def update_flow(
        self, org: str, flow_id: str, changes: Mapping[str, Any]
    ) -> LiveFlow | None:
        self._flows.pop(flow_id, None)
        values = dict(changes)
        if "auto_eval_flow_ids" in values:
            values["auto_eval_flow_ids"] = list(values["auto_eval_flow_ids"])
        async with self.db.write() as conn:
            result = await conn.execute(
                update(flows)
                .where(flows.c.id == flow_id, flows.c.organisation_id == org)
                .values(**values)
            )
            if result.rowcount == 0:
                return None
        self._flows.pop(flow_id, None)
        return await self.get_flow(org, flow_id)

    async def delete_flow(self, org: str, flow_id: str) -> bool:
        self._flows.pop(flow_id, None)
        async with self.db.write() as conn:
            result = await conn.execute(
                delete(flows).where(flows.c.id == flow_id, flows.c.organisation_id == org)
            )
            if not result.rowcount:
                return False
            # The flow goes with its versions, its sessions (their steps, runs, events and
            # messages) and its evaluation jobs. Every one is the organisation's: named with
            # it, each delete reads its (organisation, flow) index rather than the whole table
            # while it holds the write lock.
            of_flow = select(sessions_table.c.id).where(
                sessions_table.c.organisation_id == org, sessions_table.c.live_flow_id == flow_id
            )
            for child in (events_table, steps_table, messages_table):
                await conn.execute(delete(child).where(child.c.session_id.in_(of_flow)))
            for table, flow_column in (
                (runs_table, runs_table.c.flow_id),
                (jobs_table, jobs_table.c.flow_id),
                (sessions_table, sessions_table.c.live_flow_id),
            ):
                await conn.execute(
                    delete(table).where(table.c.organisation_id == org, flow_column == flow_id)
                )
            await conn.execute(delete(versions).where(versions.c.flow_id == flow_id))
        self._flows.pop(flow_id, None)
        for stale in [k for k, v in self._versions.items() if v.flow_id == flow_id]:
            del self._versions[stale]
        for gone in [k for k in self._numbered if k[0] == flow_id]:
            del self._numbered[gone]
        return bool(result.rowcount)

    # -- versions ----------------------------------------------------------------------

    async def add_version(
        self, org: str, flow_id: str, make: Callable[[int], FlowVersion]
    ) -> FlowVersion | None:
        self._flows.pop(flow_id, None)
        async with self.db.write() as conn:
            found = (
                await conn.execute(
                    select(flows.c.id).where(flows.c.id == flow_id, flows.c.organisation_id == org)
                )
            ).first()
            if found is None:
                return None
            highest = (
                await conn.execute(
                    select(func.coalesce(func.max(versions.c.version), 0)).where(
                        versions.c.flow_id == flow_id
                    )
                )
            ).scalar_one()
            version = make(int(highest) + 1)
            await conn.execute(versions.insert().values(**_version_values(version)))
            await conn.execute(
                update(flows)
                .where(flows.c.id == flow_id)
                .values(current_version_id=version.id, updated_at=version.created_at)
            )
        self._flows.pop(flow_id, None)
        self._versions[version.id] = version
        return version

    async def _one_version(self, query: Select[Any]) -> FlowVersion | None:
        async with self.db.read() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        version = self._versions.setdefault(row.id, _version(row))
        return version

    async def get_version(self, org: str, version_id: str) -> FlowVersion | None:
        cached = self._versions.get(version_id)
        if cached is not None:
            return cached if cached.organisation_id == org else None
        return await self._one_version(
            select(versions).where(versions.c.id == version_id, versions.c.organisation_id == org)
        )

    async def get_version_number(self, org: str, flow_id: str, number: int) -> FlowVersion | None:
        # Versions never change once published: a run on a long session asks for its pinned
        # number on every turn, so the answer is kept (deleting the flow forgets it).
        known = self._numbered.get((flow_id, number))
        if known is not None:
            return known if known.organisation_id == org else None
        found = await self._one_version(
            select(versions).where(
                versions.c.flow_id == flow_id,
                versions.c.version == number,
                versions.c.organisation_id == org,
            )
        )
        if found is not None:
            self._numbered[(flow_id, number)] = found
        return found

    async def load_versions(
        self, version_ids: set[str], conn: Reader | None = None
    ) -> dict[str, FlowVersion]:
        """With `conn`, on that connection: a caller holding a pooled connection must not wait
        for a second one (a full pool would wait on itself)."""
        missing = [v for v in version_ids if v not in self._versions]
        if missing:
            query = select(versions).where(versions.c.id.in_(missing))
            if conn is not None:
                rows = (await conn.execute(query)).all()
            else:
                async with self.db.read() as own:
                    rows = (await own.execute(query)).all()
            for row in rows:
                self._versions.setdefault(row.id, _version(row))
        return {v: self._versions[v] for v in version_ids if v in self._versions}

    async def list_versions(self, org: str, flow_id: str, page: Page) -> list[FlowVersion]:
        query = newest_first(
            select(versions).where(
                versions.c.flow_id == flow_id, versions.c.organisation_id == org
            ),
            versions,
            page,
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [self._versions.setdefault(r.id, _version(r)) for r in rows]

    # -- keys --------------------------------------------------------------------------

    async def add_key(self, key: ApiKey) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                api_keys.insert().values(
                    id=key.id,
                    organisation_id=key.organisation_id,
                    salt=key.salt,
                    secret_hash=key.secret_hash,
                    created_at=key.created_at,
                    expires_at=key.expires_at,
                )
            )

    async def get_key(self, key_id: str) -> ApiKey | None:
        async with self.db.read() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return None if row is None else _key(row)

    async def list_keys(self, org: str) -> list[ApiKey]:
        query = select(api_keys).order_by(api_keys.c.created_at)
        if org:
            query = query.where(api_keys.c.organisation_id == org)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [_key(r) for r in rows]

    async def revoke_key(self, key_id: str, when: datetime) -> bool:
        async with self.db.write() as conn:
            result = await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=when)
            )
        return bool(result.rowcount)

    async def touch_key(self, key_id: str, when: datetime) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=when)
            )
