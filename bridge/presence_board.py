"""Matrix presence of the directory's users, shared by the deployment's processes.

The process that receives transactions records every pushed ``m.presence`` (Synapse pushes
a change for every user sharing a room with a puppet). All processes read the board in one
Redis call, and a read never asks the homeserver: ``GET /api/users`` with a 10,000-user
directory costs no homeserver call. A user the board has never seen, or not for
``MAX_AGE`` seconds, reads as unknown (offline) and is queued; a background task per
process asks ``GET /presence`` for the queue at most ``RATE`` users a second, ``_ASKS`` at a
time, and records the answers for everybody. Without Redis, or while it is down, the board
is this process's memory.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from redis.asyncio import Redis

from .context import MATRIX
from .redis_state import REDIS_ERRORS

log = logging.getLogger("bridge.presence")

# Longest a presence is trusted without a push (a push missed while the bridge was down).
MAX_AGE = 600.0
# The background refresh: homeserver asks per second (per process), and at once.
RATE = 20.0
_ASKS = 8
# Most users waiting for a refresh; past it a user is queued again by a later read.
_QUEUE_CAP = 20000
# Most presences kept in this process's memory; past it the memory is emptied (Redis keeps
# the board, and the refresh fills it again).
_MEMORY_CAP = 50000


class PresenceBoard:
    def __init__(
        self, app: web.Application, prefix: str, redis: Callable[[], Redis | None]
    ) -> None:
        self.app = app
        self.key = f"{prefix}:presence"
        self._redis = redis
        # This process's copy: capped at _MEMORY_CAP (emptied past it).
        self._memory: dict[str, dict[str, Any]] = {}
        # Users to ask the homeserver about, oldest first (a dict as an ordered set), capped
        # at _QUEUE_CAP; the refresh task takes them off as it asks.
        self._due: dict[str, None] = {}
        # The same for users whose presence the bridge just changed: asked before the rest.
        self._first: dict[str, None] = {}
        self._wake = asyncio.Event()
        # Homeserver asks made by the refresh (what a test or a metric may read).
        self.asked = 0

    async def put(self, mxid: str, content: dict[str, Any]) -> dict[str, Any]:
        """Record a presence (pushed, or just asked for); returns the state recorded."""
        ago = content.get("last_active_ago")
        state = {
            "presence": content.get("presence"),
            "currently_active": bool(content.get("currently_active")),
            "_at": time.time() * 1000 - ago if isinstance(ago, int | float) else None,
            "_seen": time.time(),
        }
        if len(self._memory) >= _MEMORY_CAP:
            self._memory.clear()
        self._memory[mxid] = state
        if (redis := self._redis()) is not None:
            try:
                await redis.hset(self.key, mxid, json.dumps(state))
            except REDIS_ERRORS as e:
                log.debug("Presence of %s kept in memory only: %s", mxid, e)
        return state

    async def forget(self, mxid: str) -> None:
        """The bridge changed this user's presence itself: ask Matrix again, first."""
        self._memory.pop(mxid, None)
        if (redis := self._redis()) is not None:
            try:
                await redis.hdel(self.key, mxid)
            except REDIS_ERRORS as e:
                log.debug("Cannot forget the presence of %s: %s", mxid, e)
        self._queue(mxid, first=True)  # after the delete, so the answer is not deleted

    async def known(self, mxids: list[str]) -> dict[str, dict[str, Any]]:
        """What the board holds for these users, never asking the homeserver."""
        return await self._read(mxids)

    async def _read(self, mxids: list[str]) -> dict[str, dict[str, Any]]:
        found = {m: self._memory[m] for m in mxids if m in self._memory}
        if (redis := self._redis()) is None or not mxids:
            return found
        try:
            values = await redis.hmget(self.key, mxids)
        except REDIS_ERRORS:
            return found
        for mxid, raw in zip(mxids, values, strict=True):
            if raw is not None:
                # orjson: a listing reads one state per participant (1,000 and more).
                state = orjson.loads(raw)
                if state.get("_seen", 0) >= found.get(mxid, {}).get("_seen", 0):
                    found[mxid] = state
        return found

    def _queue(self, mxid: str, *, first: bool = False) -> None:
        queue = self._first if first else self._due
        if mxid not in queue and len(queue) < _QUEUE_CAP:
            queue[mxid] = None
            self._wake.set()

    async def get_many(self, mxids: list[str]) -> dict[str, dict[str, Any]]:
        """Presence per mxid, from the board only; unseen or stale users are queued for the
        background refresh and read as unknown ({}) until it has asked."""
        known = await self._read(mxids)
        now = time.time()
        for mxid in mxids:
            if now - known.get(mxid, {}).get("_seen", 0) > MAX_AGE:
                self._queue(mxid)
        return {m: known.get(m, {}) for m in mxids}

    async def refresh(self) -> None:
        """Ask the homeserver for the queued users, at most RATE a second (runs forever)."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._first or self._due:
                started = loop.time()
                queue = self._first or self._due
                batch = list(itertools.islice(queue, _ASKS))
                for mxid in batch:
                    del queue[mxid]
                # Another process may have refreshed some meanwhile (the board is shared);
                # a forgotten one is asked whatever the board says.
                known = await self._read(batch) if queue is self._due else {}
                now = time.time()
                stale = [m for m in batch if now - known.get(m, {}).get("_seen", 0) > MAX_AGE]
                await asyncio.gather(*(self._ask(m) for m in stale))
                await asyncio.sleep(max(0.0, len(stale) / RATE - (loop.time() - started)))

    async def _ask(self, mxid: str) -> None:
        self.asked += 1
        try:
            content = await self.app[MATRIX].get_presence(mxid)
        except Exception as e:  # presence is decoration
            log.debug("No presence for %s: %s", mxid, e)
            content = {}
        await self.put(mxid, content)


PRESENCE_BOARD = web.AppKey("presence_board", PresenceBoard)
