"""Webhook POSTs through httpx: no redirects followed, a bounded time, the answer read only
as far as its status (and a short excerpt of a failure)."""

from __future__ import annotations

import asyncio

import httpx

from flowsvc.domain.webhook_delivery import EXCERPT, Outcome


class HttpxSender:
    def __init__(self) -> None:
        self._client = httpx.AsyncClient(follow_redirects=False)

    async def post(
        self, url: str, headers: dict[str, str], body: bytes, timeout: float
    ) -> Outcome:
        try:
            async with asyncio.timeout(timeout):  # the whole exchange, not each read
                response = await self._client.post(
                    url, headers=headers, content=body, timeout=timeout
                )
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(0, f"no answer within {timeout:g}s")
        except httpx.HTTPError as exc:
            return Outcome(0, f"{type(exc).__name__}: {exc}"[:EXCERPT])
        if 200 <= response.status_code < 300:
            return Outcome(response.status_code)
        return Outcome(
            response.status_code,
            f"HTTP {response.status_code}: {response.text[:EXCERPT]}",
        )

    async def close(self) -> None:
        await self._client.aclose()
