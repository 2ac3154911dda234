"""request_id: one outcome per id, even when retries race each other."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Hashable
from typing import Any


class Claim:
    """The right to perform a request; others with the same id wait for its outcome."""

    def __init__(self, claims: RequestClaims, key: Hashable) -> None:
        self._claims = claims
        self._key = key
        self.future: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def resolve(self, ident: str, committed: asyncio.Future[None]) -> None:
        """The request made `ident`. The answer stays here for later retries too: a retry whose
        store lookup began before that commit would not see it there."""
        self.future.set_result(ident)

        def forget_if_lost(done: asyncio.Future[None]) -> None:
            if done.cancelled() or done.exception() is not None:
                self.release()

        committed.add_done_callback(forget_if_lost)
        self._claims.remember(self._key, self.future)

    def release(self) -> None:
        """The request made nothing that lasts: retries start afresh."""
        if self._claims.inflight.get(self._key) is self.future:
            del self._claims.inflight[self._key]
        if not self.future.done():
            self.future.set_exception(RuntimeError("request did not complete"))
            self.future.exception()  # retrieved: waiters retry on their own


# Answers kept in memory; older ones are found in the store.
REMEMBERED = 50_000


class RequestClaims:
    def __init__(self) -> None:
        self.inflight: dict[Hashable, asyncio.Future[str]] = {}

    def remember(self, key: Hashable, answer: asyncio.Future[str]) -> None:
        self.inflight[key] = answer
        while len(self.inflight) > REMEMBERED:
            oldest = next(iter(self.inflight))
            if not self.inflight[oldest].done():
                break
            del self.inflight[oldest]

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


def request_digest(method: str, *parts: Any) -> str:
    """What makes two requests with one request_id the same request."""
    text = json.dumps(
        [method, *[p.__dict__ if hasattr(p, "__dict__") else p for p in parts]],
        sort_keys=True,
        default=str,
        separators=(",", ":"),
    )
    return hashlib.sha256(text.encode()).hexdigest()
