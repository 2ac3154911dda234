"""The small async interfaces the domain needs from a store. Backends implement them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from flowsvc.domain.model import ApiKey, FlowVersion, LiveFlow
from flowsvc.domain.paging import Page


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


class KeyStore(Protocol):
    async def add_key(self, key: ApiKey) -> None: ...

    async def get_key(self, key_id: str) -> ApiKey | None: ...
