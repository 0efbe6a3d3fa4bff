"""Matrix presence of the directory's users, shared by the deployment's processes.

The process that receives transactions records every pushed ``m.presence`` (Synapse pushes
a change for every user sharing a room with a puppet). All processes read the board in one
Redis call; only a user it has never seen, or not for ``MAX_AGE`` seconds, is asked with
``GET /presence`` (then recorded for everybody). Without Redis, or while it is down, the
board is this process's memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from .context import MATRIX
from .redis_state import REDIS_ERRORS

log = logging.getLogger("bridge.presence")

# Longest a presence is trusted without a push (a push missed while the bridge was down).
MAX_AGE = 600.0
_ASKS = 8


class PresenceBoard:
    def __init__(
        self, app: web.Application, prefix: str, redis: Callable[[], Redis | None]
    ) -> None:
        self.app = app
        self.key = f"{prefix}:presence"
        self._redis = redis
        self._memory: dict[str, dict[str, Any]] = {}

    async def put(self, mxid: str, content: dict[str, Any]) -> dict[str, Any]:
        """Record a presence (pushed, or just asked for); returns the state recorded."""
        ago = content.get("last_active_ago")
        state = {
            "presence": content.get("presence"),
            "currently_active": bool(content.get("currently_active")),
            "_at": time.time() * 1000 - ago if isinstance(ago, int | float) else None,
            "_seen": time.time(),
        }
        self._memory[mxid] = state
        if len(self._memory) > 50000:
            self._memory.clear()
        if (redis := self._redis()) is not None:
            try:
                await redis.hset(self.key, mxid, json.dumps(state))
            except REDIS_ERRORS as e:
                log.debug("Presence of %s kept in memory only: %s", mxid, e)
        return state

    async def forget(self, mxid: str) -> None:
        """The bridge changed this user's presence itself: ask Matrix at the next read."""
        self._memory.pop(mxid, None)
        if (redis := self._redis()) is not None:
            try:
                await redis.hdel(self.key, mxid)
            except REDIS_ERRORS as e:
                log.debug("Cannot forget the presence of %s: %s", mxid, e)

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
                state = json.loads(raw)
                if state.get("_seen", 0) >= found.get(mxid, {}).get("_seen", 0):
                    found[mxid] = state
        return found

    async def get_many(self, mxids: list[str]) -> dict[str, dict[str, Any]]:
        """Presence per mxid; asks the homeserver only for users unseen for MAX_AGE."""
        known = await self._read(mxids)
        now = time.time()
        stale = [m for m in mxids if now - known.get(m, {}).get("_seen", 0) > MAX_AGE]
        limit = asyncio.Semaphore(_ASKS)

        async def ask(mxid: str) -> None:
            async with limit:
                try:
                    content = await self.app[MATRIX].get_presence(mxid)
                except Exception as e:  # presence is decoration
                    log.debug("No presence for %s: %s", mxid, e)
                    content = {}
            # Not read back from memory: a forget() while Redis records it may have gone.
            known[mxid] = await self.put(mxid, content)

        await asyncio.gather(*(ask(m) for m in stale))
        return {m: known.get(m, {}) for m in mxids}


PRESENCE_BOARD = web.AppKey("presence_board", PresenceBoard)
