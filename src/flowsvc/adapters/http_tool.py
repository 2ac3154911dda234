"""HTTP tool steps through httpx: allow-listed hosts only, bounded time and size."""

from __future__ import annotations

from collections.abc import Iterable

import httpx

from flowsvc.adapters.propagation import trace_headers
from flowsvc.domain.tools import HttpCall, ToolError

MAX_REDIRECTS = 5
EXCERPT = 300


def _host_key(url: httpx.URL) -> tuple[str, str]:
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.host.lower(), f"{url.host.lower()}:{port}"


class AllowListedHttp:
    def __init__(
        self, allow_hosts: Iterable[str], *, timeout: float, max_response_bytes: int
    ) -> None:
        self._allowed = frozenset(h.strip().lower() for h in allow_hosts if h.strip())
        self._timeout = timeout
        self._max_bytes = max_response_bytes
        self._client = httpx.AsyncClient(follow_redirects=False)

    def _check(self, url: httpx.URL) -> None:
        if url.scheme not in ("http", "https"):
            raise ToolError(f"only http and https URLs may be called, not {url.scheme!r}")
        host, host_port = _host_key(url)
        if host not in self._allowed and host_port not in self._allowed:
            raise ToolError(f"host {host_port!r} is not on the server's HTTP allow-list")

    async def call(self, request: HttpCall) -> str:
        try:
            url = httpx.URL(request.url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise ToolError(f"invalid URL: {exc}") from None
        method = request.method or "POST"
        body: str | None = request.body or None
        timeout = request.timeout_ms / 1000 if request.timeout_ms else self._timeout
        for _ in range(MAX_REDIRECTS + 1):
            self._check(url)
            try:
                async with self._client.stream(
                    method,
                    url,
                    headers={**dict(request.headers), **trace_headers()},
                    content=body,
                    timeout=timeout,
                ) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = url.join(response.headers["location"])
                        if response.status_code == 303:
                            method, body = "GET", None
                        continue
                    data = bytearray()
                    async for part in response.aiter_bytes():
                        data += part
                        if len(data) > self._max_bytes:
                            raise ToolError(f"response is larger than {self._max_bytes} bytes")
                    text = data.decode(response.encoding or "utf-8", errors="replace")
                    if not response.is_success:
                        raise ToolError(
                            f"{method} {url} answered HTTP {response.status_code}: {text[:EXCERPT]}"
                        )
                    return text
            except httpx.TimeoutException:
                raise ToolError(f"{method} {url} timed out after {timeout:g}s") from None
            except httpx.HTTPError as exc:
                raise ToolError(f"{method} {url} failed: {exc}") from None
        raise ToolError(f"more than {MAX_REDIRECTS} redirects")

    async def close(self) -> None:
        await self._client.aclose()
