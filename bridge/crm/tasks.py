"""Concurrent steps that stop together: the engine's replacement for ``asyncio.gather``.

With ``gather``, a step that fails returns control to the caller while its siblings keep
writing, so the engine lock could be released under running writes. A ``TaskGroup``
cancels the siblings and waits for them before the failure comes out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


async def run_all(steps: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run every step concurrently; the first failure cancels the others, which have all
    finished when it is raised (unwrapped, so the error middleware maps it as usual)."""
    tasks: list[asyncio.Task[T]] = []
    try:
        async with asyncio.TaskGroup() as group:
            for step in steps:
                tasks.append(group.create_task(step))
    except BaseExceptionGroup as failed:
        raise _first(failed) from None
    return [task.result() for task in tasks]


def _first(group: BaseExceptionGroup) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
