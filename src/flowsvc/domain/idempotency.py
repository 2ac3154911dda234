"""request_id: one outcome per id, even when retries race each other."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable


class Claim:
    """The right to perform a request; others with the same id wait for its outcome."""

    def __init__(self, claims: RequestClaims, key: Hashable) -> None:
        self._claims = claims
        self._key = key
        self.future: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def resolve(self, ident: str, committed: asyncio.Future[None]) -> None:
        """The request made `ident`; once that is committed the store answers retries."""
        self.future.set_result(ident)
        committed.add_done_callback(lambda _: self.release())

    def release(self) -> None:
        if self._claims.inflight.get(self._key) is self.future:
            del self._claims.inflight[self._key]
        if not self.future.done():
            self.future.set_exception(RuntimeError("request did not complete"))
            self.future.exception()  # retrieved: waiters retry on their own


class RequestClaims:
    def __init__(self) -> None:
        self.inflight: dict[Hashable, asyncio.Future[str]] = {}

    async def claim(
        self, key: Hashable, lookup: Callable[[], Awaitable[str | None]]
    ) -> tuple[str | None, Claim | None]:
        """(id made by an earlier request, None) or (None, a claim to perform it now)."""
        while True:
            pending = self.inflight.get(key)
            if pending is not None:
                try:
                    return await asyncio.shield(pending), None
                except RuntimeError:
                    continue
            found = await lookup()
            if found is not None:
                return found, None
            if key in self.inflight:
                continue
            claim = Claim(self, key)
            self.inflight[key] = claim.future
            return None, claim
