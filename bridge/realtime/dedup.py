"""Emit each message once, whichever path sees it first: the local echo or the transaction.

* With Redis the claim is shared by every facade process (``SET NX``). While Redis is away
  (bridge/redis_state.py) each process claims in memory: it only reaches its own sockets then, so
  each of them still gets a message once. Every claim is also remembered in memory, so a
  process never emits a message twice whatever Redis says after an outage (Redis may come
  back empty).
* Without Redis, one process is all there is; its claims live in the bridge database
  (table ``emitted_event``), so a restart after a crash does not emit again the messages
  Synapse redelivers in its transactions.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

from mautrix.util.async_db import Database
from redis.asyncio import Redis

from ..db.emitted_event import EmittedEventStore
from ..redis_state import REDIS_ERRORS, RedisState


class Claims(Protocol):
    async def claim(self, key: str) -> bool:
        """True for the first caller with this key, False for every later one."""


class MemoryClaims:
    def __init__(self, size: int = 50000) -> None:
        self.size = size
        self._seen: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._seen

    def add(self, key: str) -> bool:
        """Remember the key; True when it was new."""
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True

    async def claim(self, key: str) -> bool:
        return self.add(key)


class RedisClaims:
    def __init__(self, redis: Redis, prefix: str, ttl_seconds: int = 86400) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = ttl_seconds

    async def claim(self, key: str) -> bool:
        return bool(await self.redis.set(f"{self.prefix}:emitted:{key}", 1, nx=True, ex=self.ttl))


class FallbackClaims:
    """Redis claims while Redis answers, this process's memory while it does not."""

    def __init__(self, redis: RedisClaims, state: RedisState, size: int = 50000) -> None:
        self.redis = redis
        self.state = state
        self.local = MemoryClaims(size)

    def seen(self, key: str) -> None:
        """Another process emitted this message (heard through Redis)."""
        self.local.add(key)

    async def claim(self, key: str) -> bool:
        if not self.local.add(key):
            return False
        if not self.state.up:
            return True
        try:
            return await self.redis.claim(key)
        except REDIS_ERRORS as e:
            self.state.down(f"claiming a message failed: {e!r}")
            return True


class DatabaseClaims:
    """One process without Redis: claims that survive a restart. The second path to see a
    message (usually the transaction, after the local echo) is answered from memory."""

    def __init__(self, db: Database, ttl_seconds: int = 86400, size: int = 50000) -> None:
        self.db = db
        self.ttl_ms = ttl_seconds * 1000
        self.local = MemoryClaims(size)
        self._since_prune = 0

    async def claim(self, key: str) -> bool:
        if key in self.local:
            return False
        now = int(time.time() * 1000)
        inserted = await EmittedEventStore(self.db).claim(key, now)
        self.local.add(key)
        self._since_prune += 1
        if self._since_prune >= 5000:
            await self.prune()
        return inserted

    async def prune(self) -> None:
        """Forget claims older than the TTL (Synapse does not redeliver that late)."""
        self._since_prune = 0
        cutoff = int(time.time() * 1000) - self.ttl_ms
        await EmittedEventStore(self.db).forget_before(cutoff)
