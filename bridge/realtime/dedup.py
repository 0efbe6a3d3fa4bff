"""Emit each message once, whichever path sees it first: the local echo or the transaction.

With Redis the claim is shared by every facade process (``SET NX``); without it, one process
is all there is and a bounded in-memory set is enough.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from redis.asyncio import Redis


class Claims(Protocol):
    async def claim(self, key: str) -> bool:
        """True for the first caller with this key, False for every later one."""


class MemoryClaims:
    def __init__(self, size: int = 50000) -> None:
        self.size = size
        self._seen: OrderedDict[str, None] = OrderedDict()

    async def claim(self, key: str) -> bool:
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True


class RedisClaims:
    def __init__(self, redis: Redis, prefix: str, ttl_seconds: int = 86400) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = ttl_seconds

    async def claim(self, key: str) -> bool:
        return bool(await self.redis.set(f"{self.prefix}:emitted:{key}", 1, nx=True, ex=self.ttl))
