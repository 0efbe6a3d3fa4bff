"""Small helpers for tasks a request or the app starts beside its own work."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("bridge.tasks")


def drop(task: asyncio.Future[Any]) -> None:
    """Cancel a task unless done, and take its outcome, so that none is logged as lost."""
    task.cancel()
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


async def stop(task: asyncio.Future[Any], timeout: float = 5.0) -> None:
    """Cancel a background task and wait until it has ended, for at most ``timeout``.

    A cancellation can be swallowed (a library's own timeout racing it may turn it into a
    timeout the loop then retries), so the task is cancelled again until it ends: a
    shutdown never waits forever on a loop that did not hear it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done() and (left := deadline - loop.time()) > 0:
        task.cancel()
        await asyncio.wait([task], timeout=min(0.5, left))
    if not task.done():
        log.warning("A background task did not stop within %.0f s", timeout)
        drop(task)
    elif not task.cancelled() and task.exception() is not None:
        log.debug("A background task ended with %r", task.exception())


async def stop_all(tasks: list[asyncio.Future[Any]], timeout: float = 5.0) -> None:
    """:func:`stop` for several tasks at once, all within the same ``timeout``."""
    await asyncio.gather(*(stop(task, timeout) for task in tasks))
