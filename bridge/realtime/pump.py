"""An ordered background lane for real-time work, so transactions are acknowledged quickly.

Dispatcher handlers run inside the homeserver's transaction; they hand their Socket.IO work
to a lane and return. A lane runs jobs one at a time in submission order, so a socket joins
a new conversation's room before that conversation's first message is emitted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("bridge.realtime.pump")

Job = Callable[[], Awaitable[None]]


class Lane:
    def __init__(self, name: str, maxsize: int = 10000) -> None:
        self.name = name
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=maxsize)
        self.task: asyncio.Task[None] | None = None

    def submit(self, job: Job) -> None:
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            # Clients recover what they missed through their cursor; never block intake.
            log.warning("Real-time lane %s is full; dropping a job", self.name)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"realtime-{self.name}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task], timeout=5)
            self.task = None

    async def drain(self) -> None:
        """Wait until every job submitted so far has run (tests and shutdown)."""
        await self.queue.join()

    async def _run(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Real-time job failed in lane %s", self.name)
            finally:
                self.queue.task_done()
