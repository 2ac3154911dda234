"""until_done: the wait an answer does on its run's task."""

from __future__ import annotations

import asyncio

import pytest

from flowsvc.domain.engine.waiting import until_done


def test_returns_when_the_task_ends_without_taking_its_failure() -> None:
    async def main() -> None:
        async def fails() -> None:
            await asyncio.sleep(0)
            raise RuntimeError("the run's own failure")

        task = asyncio.create_task(fails())
        await until_done(task)
        assert task.done()
        assert isinstance(task.exception(), RuntimeError)

    asyncio.run(main())


def test_a_cancelled_waiter_leaves_the_task_running_and_unhooked() -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def runs() -> str:
            await release.wait()
            return "finished"

        task = asyncio.create_task(runs())
        waiter = asyncio.create_task(until_done(task))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not task.done()
        # The waiter took its callback away: a task waited on many times holds no dead hooks.
        assert not task._callbacks
        release.set()
        assert await task == "finished"

    asyncio.run(main())


def test_a_task_already_done_returns_at_once() -> None:
    async def main() -> None:
        task = asyncio.create_task(asyncio.sleep(0))
        await task
        await until_done(task)

    asyncio.run(main())
