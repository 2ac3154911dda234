"""Each replica's background duties toward the others, on a short beat.

- cancel the local runs another replica was asked to cancel;
- claim sessions whose runs have no live owner (a dead replica's, or queued while a lease
  was being given up) and run them: takeover within a lease period of a death;
- claim evaluation jobs nobody is running;
- report whether the database answers (health).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from flowsvc.domain.engine import Engine
from flowsvc.domain.evals import Evaluations

log = logging.getLogger("flowsvc.coordinator")

CLAIM_BATCH = 100


class Coordinator:
    def __init__(
        self,
        engine: Engine,
        evaluations: Evaluations,
        *,
        beat_seconds: float,
        on_health: Callable[[bool], Awaitable[None]],
    ) -> None:
        self._engine = engine
        self._evals = evaluations
        self._beat = beat_seconds
        self._on_health = on_health
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.healthy = True

    def wake(self) -> None:
        self._wake.set()

    async def tick(self) -> int:
        """One beat; returns how many sessions and jobs it claimed."""
        await self._engine.cancel_requested()
        await self._engine.run_counts.refresh()
        claimed = 0
        while True:
            found = await self._engine.claim_orphans(CLAIM_BATCH)
            claimed += found
            if found < CLAIM_BATCH:
                break
        claimed += await self._evals.claim_orphans()
        return claimed

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="flowsvc-coordinator")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._beat)
            self._wake.clear()
            try:
                await self.tick()
                healthy = True
            except Exception:
                log.warning("coordinator beat failed", exc_info=True)
                healthy = False
            if healthy != self.healthy:
                self.healthy = healthy
                await self._on_health(healthy)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
