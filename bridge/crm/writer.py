"""Every homeserver write of a sync goes through one gate: bounded concurrency and progress."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
Progress = Callable[[int, int], None]


class Writer:
    def __init__(self, concurrency: int, total: int = 0, progress: Progress | None = None) -> None:
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self.total = total
        self.done = 0
        self.progress = progress

    async def __call__(self, write: Awaitable[T], count: int = 1) -> T:
        async with self._slots:
            result = await write
        self.done += count
        if self.progress:
            self.progress(self.done, max(self.total, self.done))
        return result
