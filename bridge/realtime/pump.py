"""Lanes for real-time work, so transactions are acknowledged quickly and one slow
conversation never holds up another.

Dispatcher handlers run inside the homeserver's transaction; they hand their Socket.IO work
to a lane and return. Work is keyed (by room, for a conversation's events): jobs of one key
run one at a time in submission order, so a socket joins a new conversation's room before
that conversation's first message is emitted; jobs of different keys run side by side, at
most ``workers`` at once. A lane exists while it has work and is reaped as soon as it runs
dry, so idle conversations cost nothing.

Everything is bounded: jobs per lane, lanes alive, jobs queued in all, and each job's time.
A job that cannot be queued, fails or runs out of time is dropped, and ``on_drop(key,
reason)`` is told: at once, or, if that key was told less than ``REPORT_INTERVAL`` ago, once
more when the interval is over (so the last drop is always followed by a report, and a
flood of drops costs one a second). The real-time side turns it into a ``resync`` event for
the conversation, never silence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..matrix.homeserver import patience
from ..tasks import stop_all

log = logging.getLogger("bridge.realtime.pump")

Job = Callable[[], Awaitable[None]]
OnDrop = Callable[[str, str], Awaitable[None]]

# Why a job was dropped (the ``reason`` of ``resync``).
OVERFLOW = "overflow"
FAILED = "failed"
TIMEOUT = "timeout"

REPORT_INTERVAL = 1.0  # seconds between two reports of drops for one key


@dataclass
class _Lane:
    jobs: deque[Job] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


class Lanes:
    def __init__(
        self,
        name: str,
        *,
        workers: int = 8,
        per_lane: int = 1000,
        max_lanes: int = 5000,
        max_queued: int = 20000,
        job_timeout: float = 15.0,
        lookup_timeout: float | None = 2.0,
        on_drop: OnDrop | None = None,
    ) -> None:
        self.name = name
        self.per_lane = per_lane
        self.max_lanes = max_lanes
        self.max_queued = max_queued
        self.job_timeout = job_timeout
        # Each homeserver request a job makes (profiles, bodies, pins) gives up after this.
        self.lookup_timeout = lookup_timeout
        self.on_drop = on_drop
        self._workers = asyncio.Semaphore(workers)
        # Key -> its lane, only while the lane has jobs (an emptied lane is deleted).
        self._lanes: dict[str, _Lane] = {}
        self._queued = 0  # jobs submitted and not finished, in all lanes
        self._idle = asyncio.Event()
        self._idle.set()
        self._reports: set[asyncio.Task[None]] = set()
        # When drops of a key were last reported, and the keys with a report due: past
        # 10,000 keys the reports older than REPORT_INTERVAL are pruned; a due key leaves
        # when its report is sent.
        self._reported_at: dict[str, float] = {}
        self._due: set[str] = set()
        self._stopped = False
        self.dropped: Counter[str] = Counter()  # by reason

    def __len__(self) -> int:
        """Lanes alive (with work queued or running)."""
        return len(self._lanes)

    def submit(self, key: str, job: Job) -> bool:
        """Queue ``job`` behind the key's earlier jobs; False if it was dropped."""
        if self._stopped:
            log.warning("Real-time lane %s is stopped; dropped a job of %s", self.name, key)
            return False
        lane = self._lanes.get(key)
        full = (
            self._queued >= self.max_queued
            or (lane is None and len(self._lanes) >= self.max_lanes)
            or (lane is not None and len(lane.jobs) >= self.per_lane)
        )
        if full:
            # Never block intake: the conversation's sockets are told to refetch instead.
            self._drop(key, OVERFLOW)
            return False
        if lane is None:
            lane = self._lanes[key] = _Lane()
        lane.jobs.append(job)
        self._queued += 1
        self._idle.clear()
        if lane.task is None:
            lane.task = asyncio.create_task(self._run(key, lane), name=f"realtime-{self.name}")
        return True

    async def _run(self, key: str, lane: _Lane) -> None:
        with patience(self.lookup_timeout):
            await self._work(key, lane)

    async def _work(self, key: str, lane: _Lane) -> None:
        try:
            while lane.jobs:
                job = lane.jobs[0]
                try:
                    async with self._workers:
                        await asyncio.wait_for(job(), self.job_timeout)
                except TimeoutError:
                    log.warning("A real-time job in lane %s ran out of time", self.name)
                    self._drop(key, TIMEOUT)
                except Exception:
                    log.exception("Real-time job failed in lane %s", self.name)
                    self._drop(key, FAILED)
                finally:
                    lane.jobs.popleft()
                    self._finished(1)
        finally:
            # Ran dry (or cancelled on stop): the lane goes, its memory of drops with it.
            if self._lanes.get(key) is lane:
                del self._lanes[key]
            self._finished(len(lane.jobs))
            lane.jobs.clear()

    def _finished(self, count: int) -> None:
        self._queued -= count
        if self._queued <= 0:
            self._queued = 0
            self._idle.set()

    def _drop(self, key: str, reason: str) -> None:
        self.dropped[reason] += 1
        if self.on_drop is None or self._stopped or key in self._due:
            return
        now = time.monotonic()
        last = self._reported_at.get(key)
        if last is None or now - last >= REPORT_INTERVAL:
            self._tell(key, reason)
            return
        self._due.add(key)
        wait = last + REPORT_INTERVAL - now
        asyncio.get_running_loop().call_later(wait, self._tell, key, reason)

    def _tell(self, key: str, reason: str) -> None:
        self._due.discard(key)
        if self._stopped:
            return
        now = time.monotonic()
        if len(self._reported_at) > 10000:
            self._reported_at = {
                k: at for k, at in self._reported_at.items() if now - at < REPORT_INTERVAL
            }
        self._reported_at[key] = now
        log.warning("Real-time lane %s dropped a job of %s (%s): resync", self.name, key, reason)
        assert self.on_drop is not None
        task = asyncio.create_task(self._report(key, reason))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _report(self, key: str, reason: str) -> None:
        assert self.on_drop is not None
        try:
            await asyncio.wait_for(self.on_drop(key, reason), self.job_timeout)
        except Exception:
            log.exception("Could not send a resync for lane %s", self.name)

    async def drain(self) -> None:
        """Wait until every job submitted so far has run, and the reports made at once were
        sent (tests and shutdown; a report due later is not waited for)."""
        await self._idle.wait()
        if self._reports:
            await asyncio.wait(set(self._reports))

    def pending(self) -> list[str]:
        """Keys with jobs queued or running (shutdown: what a drain left)."""
        return list(self._lanes)

    async def stop(self) -> None:
        self._stopped = True
        lanes = [lane.task for lane in self._lanes.values() if lane.task is not None]
        await stop_all([*lanes, *self._reports])
        self._lanes.clear()
        self._queued = 0
        self._idle.set()
