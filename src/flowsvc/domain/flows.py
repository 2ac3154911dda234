"""Live flows and their versions: the use cases behind LiveFlowService."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any

from flowsvc.domain.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound
from flowsvc.domain.graph import validate_graph
from flowsvc.domain.idempotency import request_digest
from flowsvc.domain.ids import new_id, now, require_id
from flowsvc.domain.limits import Limits
from flowsvc.domain.model import FlowVersion, Graph, LiveFlow, Step, Transition
from flowsvc.domain.paging import Listed, Page, listed, parse_page
from flowsvc.domain.ports import FlowStore, RunStore

UPDATABLE_FIELDS = ("name", "description", "auto_eval_flow_ids")
MAX_REQUEST_ID_CHARS = 128


RECENT_SESSIONS = 10


class FlowCatalog:
    def __init__(
        self,
        store: FlowStore,
        limits: Limits,
        sessions: RunStore | None = None,
        stop_runs: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._limits = limits
        self._sessions = sessions
        # Cancels a flow's runs in flight, on whichever replica runs them (wired at start-up).
        self._stop_runs = stop_runs

    def _check_details(self, name: str, description: str) -> list[FieldViolation]:
        problems = []
        if not name.strip():
            problems.append(FieldViolation("name", "required"))
        elif len(name) > self._limits.max_flow_name_chars:
            problems.append(
                FieldViolation("name", f"at most {self._limits.max_flow_name_chars} characters")
            )
        if len(description) > self._limits.max_description_chars:
            problems.append(
                FieldViolation(
                    "description", f"at most {self._limits.max_description_chars} characters"
                )
            )
        return problems

    def _graph(self, steps: Sequence[Step], transitions: Sequence[Transition]) -> Graph:
        return validate_graph(steps, transitions, self._limits, new_id)

    async def create_flow(
        self,
        org: str,
        name: str,
        description: str,
        steps: Sequence[Step],
        transitions: Sequence[Transition],
        auto_eval_flow_ids: Sequence[str] = (),
        request_id: str = "",
    ) -> LiveFlow:
        problems = self._check_details(name, description)
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            problems.append(
                FieldViolation("request_id", f"at most {MAX_REQUEST_ID_CHARS} characters")
            )
        graph: Graph | None = None
        if steps or transitions:
            try:
                graph = self._graph(steps, transitions)
            except InvalidArgument as exc:
                problems.extend(exc.violations)
        if problems:
            raise InvalidArgument(problems)
        await self._check_eval_flows(org, auto_eval_flow_ids)
        stamp = now()
        flow = LiveFlow(
            id=new_id(),
            organisation_id=org,
            name=name,
            description=description,
            created_at=stamp,
            updated_at=stamp,
            auto_eval_flow_ids=tuple(auto_eval_flow_ids),
        )
        if request_id:
            flow.request_digest = request_digest(
                "CreateLiveFlow",
                name,
                description,
                [asdict(s) for s in steps],
                [asdict(t) for t in transitions],
                list(auto_eval_flow_ids),
            )
        version = None
        if graph is not None:
            version = FlowVersion(new_id(), flow.id, org, 1, graph, stamp)
            flow.current_version = version
        made = await self._store.create_flow(flow, version, request_id)
        # An earlier request with this request_id made `made`; it must have been this request.
        # A flow made before digests were kept has none, and is answered as before.
        if made.id != flow.id and made.request_digest not in ("", flow.request_digest):
            raise AlreadyExists.request_id_reused(request_id)
        return made

    async def _check_eval_flows(self, org: str, flow_ids: Sequence[str]) -> None:
        for i, flow_id in enumerate(flow_ids):
            field = f"auto_eval_flow_ids[{i}]"
            try:
                require_id(field, flow_id, "live flow")
                found = await self._store.get_flow(org, flow_id)
            except NotFound:
                found = None
            if found is None:
                raise InvalidArgument.one(field, f"no live flow {flow_id[:80]!r} to evaluate with")

    async def get_flow(self, org: str, flow_id: str, full: bool = False) -> LiveFlow:
        require_id("id", flow_id, "live flow")
        flow = await self._store.get_flow(org, flow_id)
        if flow is None:
            raise NotFound("live flow", flow_id)
        if full and self._sessions is not None:
            flow.sessions = list(
                await self._sessions.list_sessions(org, flow_id, "", Page(RECENT_SESSIONS, None))
            )
        return flow

    async def list_flows(self, org: str, page_size: int, page_token: str) -> Listed[LiveFlow]:
        page = parse_page(page_size, page_token, self._limits, "flows", org)
        return listed(await self._store.list_flows(org, page), page, "flows", org)

    async def update_flow(
        self, org: str, flow_id: str, values: dict[str, Any], mask: Sequence[str]
    ) -> LiveFlow:
        require_id("live_flow.id", flow_id, "live flow")
        # AIP-134: no mask means the fields given (non-empty); "*" means all of them, so that
        # a field can be cleared.
        if not mask:
            paths = [f for f in UPDATABLE_FIELDS if values[f]]
        elif list(mask) == ["*"]:
            paths = list(UPDATABLE_FIELDS)
        elif "*" in mask:
            raise InvalidArgument.one("update_mask", "'*' names every field: it comes alone")
        else:
            paths = list(mask)
        if not paths:  # nothing given, nothing named: the flow as it is
            found = await self._store.get_flow(org, flow_id)
            if found is None:
                raise NotFound("live flow", flow_id)
            return found
        unknown = [p for p in paths if p not in UPDATABLE_FIELDS]
        if unknown:
            raise InvalidArgument(
                FieldViolation(
                    "update_mask",
                    f"{p!r} cannot be updated; use one of {', '.join(UPDATABLE_FIELDS)}",
                )
                for p in unknown
            )
        changes = {p: values[p] for p in paths}
        problems = [
            FieldViolation(f"live_flow.{v.field}", v.description)
            for v in self._check_details(changes.get("name", "x"), changes.get("description", ""))
        ]
        if problems:
            raise InvalidArgument(problems)
        if "auto_eval_flow_ids" in changes:
            await self._check_eval_flows(org, changes["auto_eval_flow_ids"])
            changes["auto_eval_flow_ids"] = tuple(changes["auto_eval_flow_ids"])
        changes["updated_at"] = now()
        flow = await self._store.update_flow(org, flow_id, changes)
        if flow is None:
            raise NotFound("live flow", flow_id)
        return flow

    async def delete_flow(self, org: str, flow_id: str) -> None:
        require_id("id", flow_id, "live flow")
        if await self._store.get_flow(org, flow_id) is None:
            raise NotFound("live flow", flow_id)
        if self._stop_runs is not None:
            await self._stop_runs(org, flow_id)
        if not await self._store.delete_flow(org, flow_id):
            raise NotFound("live flow", flow_id)

    async def create_version(
        self, org: str, flow_id: str, steps: Sequence[Step], transitions: Sequence[Transition]
    ) -> FlowVersion:
        require_id("flow_id", flow_id, "live flow")
        graph = self._graph(steps, transitions)
        stamp = now()
        version = await self._store.add_version(
            org, flow_id, lambda number: FlowVersion(new_id(), flow_id, org, number, graph, stamp)
        )
        if version is None:
            raise NotFound("live flow", flow_id)
        return version

    async def get_version(self, org: str, version_id: str) -> FlowVersion:
        require_id("id", version_id, "flow version")
        version = await self._store.get_version(org, version_id)
        if version is None:
            raise NotFound("flow version", version_id)
        return version

    async def list_versions(
        self, org: str, flow_id: str, page_size: int, page_token: str
    ) -> Listed[FlowVersion]:
        require_id("flow_id", flow_id, "live flow")
        page = parse_page(page_size, page_token, self._limits, "versions", org, flow_id)
        if await self._store.get_flow(org, flow_id) is None:
            raise NotFound("live flow", flow_id)
        found = await self._store.list_versions(org, flow_id, page)
        return listed(found, page, "versions", org, flow_id)
