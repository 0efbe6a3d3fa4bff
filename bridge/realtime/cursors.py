"""Safe resume points: the ``cursor`` that ``new_message`` carries.

A client resumes with ``GET /api/chat/messages/:id?after=<cursor>``, which pages Matrix's
timeline. That is gap-free only if every message before the cursor, in timeline order, was
already sent to the client. The transaction path emits in timeline order, so a message it
handles is a safe cursor; a local echo may run ahead of messages still in flight (a burst
of concurrent sends, a crash), so it carries the newest message the transaction path has
handled in that conversation instead (the frontier). A client may then fetch a message it
already has; it merges by ``_id``.

While Redis is away (bridge/redis_state.py) cursors stop moving: every message carries the last
frontier this process knew while Redis answered, because its sockets may be missing what
other processes emitted meanwhile. When Redis returns, clients reconnect and catch up from
that pinned cursor (manager.py).
"""

from __future__ import annotations

from typing import Protocol

from redis.asyncio import Redis

from ..redis_state import REDIS_ERRORS, RedisState


class Frontier(Protocol):
    async def get(self, conversation_id: str) -> str | None: ...

    async def set(self, conversation_id: str, message_id: str) -> None: ...


class MemoryFrontier:
    def __init__(self) -> None:
        self._at: dict[str, str] = {}

    async def get(self, conversation_id: str) -> str | None:
        return self._at.get(conversation_id)

    async def set(self, conversation_id: str, message_id: str) -> None:
        self._at[conversation_id] = message_id


class RedisFrontier:
    def __init__(self, redis: Redis, prefix: str, ttl_seconds: int = 30 * 86400) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = ttl_seconds

    async def get(self, conversation_id: str) -> str | None:
        value = await self.redis.get(f"{self.prefix}:frontier:{conversation_id}")
        return value.decode() if isinstance(value, bytes) else value

    async def set(self, conversation_id: str, message_id: str) -> None:
        await self.redis.set(f"{self.prefix}:frontier:{conversation_id}", message_id, ex=self.ttl)


class FallbackFrontier:
    """The Redis frontier while Redis answers; the last one seen here while it does not."""

    def __init__(self, redis: RedisFrontier, state: RedisState) -> None:
        self.redis = redis
        self.state = state
        self.local = MemoryFrontier()

    async def get(self, conversation_id: str) -> str | None:
        if self.state.up:
            try:
                value = await self.redis.get(conversation_id)
            except REDIS_ERRORS as e:
                self.state.down(f"reading a cursor failed: {e!r}")
            else:
                if value is not None:
                    await self.local.set(conversation_id, value)
                    return value
        # Redis away, or back empty after a restart: the older, still safe, local value.
        return await self.local.get(conversation_id)

    async def set(self, conversation_id: str, message_id: str) -> None:
        if not self.state.up:
            return  # pinned for the outage
        await self.local.set(conversation_id, message_id)
        try:
            await self.redis.set(conversation_id, message_id)
        except REDIS_ERRORS as e:
            self.state.down(f"moving a cursor failed: {e!r}")
