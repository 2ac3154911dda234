"""Tools a flow may call. HTTP steps reach only hosts an operator allowed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class HttpCall:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: str
    timeout_ms: int  # 0: the tool's default


class ToolError(Exception):
    """The call was refused or failed; the message is safe to show."""


class HttpTool(Protocol):
    # Calls leave the process: the engine commits the step's start before calling.
    async def call(self, request: HttpCall) -> str: ...


class NoHttp:
    """The default: no host is allowed until an operator names some."""

    async def call(self, request: HttpCall) -> str:
        raise ToolError(
            "HTTP steps may call only allow-listed hosts, and this server allows none "
            "(set FLOWSVC_HTTP_ALLOW_HOSTS)"
        )
