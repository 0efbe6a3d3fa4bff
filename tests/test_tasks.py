"""Stopping background tasks: a swallowed cancellation never hangs a shutdown."""

from __future__ import annotations

import asyncio
import time

from bridge.tasks import stop, stop_all


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again() -> None:
    heard = 0

    async def loop_that_swallows_one() -> None:
        # As a library's timeout racing a cancel can: the first one becomes a "timeout".
        nonlocal heard
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                heard += 1
                if heard > 1:
                    raise

    task = asyncio.create_task(loop_that_swallows_one())
    await asyncio.sleep(0)
    started = time.monotonic()
    await stop(task, timeout=5)
    assert task.cancelled() and heard == 2
    assert time.monotonic() - started < 2


async def test_a_task_that_never_stops_costs_the_timeout_not_forever(caplog) -> None:
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(deaf())
    await asyncio.sleep(0)
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="bridge.tasks"):
        await stop(task, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 1.5
    assert "did not stop" in caplog.text
    release.set()
    task.cancel()
    await asyncio.sleep(0.01)
    assert task.done()


async def test_a_finished_task_is_left_as_it_is() -> None:
    async def fails() -> None:
        raise ValueError("already over")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await stop(task)  # its outcome is taken: nothing logged as never retrieved
    assert isinstance(task.exception(), ValueError)


async def test_several_tasks_stop_together_within_one_timeout() -> None:
    """A set of tasks (the presence calls, the pump's lanes) is stopped within the same
    timeout, not one timeout after another, the swallowing ones included."""
    heard: list[int] = []

    async def swallows_once(i: int) -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                heard.append(i)
                if heard.count(i) > 1:
                    raise

    tasks = [asyncio.create_task(swallows_once(i)) for i in range(3)]
    await asyncio.sleep(0)
    started = time.monotonic()
    await stop_all(tasks, timeout=5)
    assert all(t.cancelled() for t in tasks) and sorted(heard) == [0, 0, 1, 1, 2, 2]
    assert time.monotonic() - started < 2
