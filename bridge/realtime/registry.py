"""Which sockets each user has open, across every facade process.

A socket entry carries an expiry. Open sockets are renewed by their process every
``presence_refresh`` seconds (a crashed process's entries simply run out); a closed
socket's entry is kept for the offline grace period. A user counts as connected while any
entry is unexpired. The ``online`` set holds users whose puppet we set online; moving a user
into it or out of it is atomic, so exactly one process sets the puppet online or offline.

While Redis is away (bridge/redis_state.py) each process falls back to what it knows: its own
sockets, kept in memory all along. Presence then counts only this process's sockets.
"""

from __future__ import annotations

import time
from typing import Protocol

from redis.asyncio import Redis

from ..redis_state import REDIS_ERRORS, RedisState


def now_ms() -> int:
    return int(time.time() * 1000)


class SocketRegistry(Protocol):
    async def opened(self, crm_user_id: str, sid: str, lease_ms: int) -> bool:
        """Record an open socket; True when the user was not online before."""

    async def closed(self, crm_user_id: str, sid: str, grace_ms: int) -> None:
        """Keep a closed socket for the grace period, then let it expire."""

    async def renew(self, sockets: dict[str, set[str]], lease_ms: int) -> None:
        """Extend the entries of this process's open sockets."""

    async def release(self, crm_user_id: str) -> bool:
        """If the user has no unexpired socket, take them out of ``online``; True if done."""

    async def connected(self, crm_user_id: str) -> bool:
        """Whether the user has an unexpired socket anywhere."""

    async def connected_among(self, crm_user_ids: list[str]) -> set[str]:
        """Those of these users with an unexpired socket anywhere (one round trip)."""

    async def sids(self, crm_user_id: str) -> list[str]:
        """The user's socket ids in every process (closed ones may linger until expiry)."""

    async def online(self) -> list[str]:
        """Users whose puppet we set online."""


class MemoryRegistry:
    def __init__(self) -> None:
        # This process's open sockets by user and users set online: an entry leaves when
        # its last socket closes and the user is released (bounded by open sockets).
        self._sockets: dict[str, dict[str, int]] = {}
        self._online: set[str] = set()

    def _live(self, crm_user_id: str) -> dict[str, int]:
        entries = self._sockets.get(crm_user_id, {})
        now = now_ms()
        for sid in [s for s, expiry in entries.items() if expiry <= now]:
            del entries[sid]
        return entries

    async def opened(self, crm_user_id: str, sid: str, lease_ms: int) -> bool:
        self._sockets.setdefault(crm_user_id, {})[sid] = now_ms() + lease_ms
        first = crm_user_id not in self._online
        self._online.add(crm_user_id)
        return first

    async def closed(self, crm_user_id: str, sid: str, grace_ms: int) -> None:
        entries = self._sockets.get(crm_user_id)
        if entries is not None and sid in entries:
            entries[sid] = now_ms() + grace_ms

    async def renew(self, sockets: dict[str, set[str]], lease_ms: int) -> None:
        expiry = now_ms() + lease_ms
        for crm_user_id, sids in sockets.items():
            entries = self._sockets.setdefault(crm_user_id, {})
            for sid in sids:
                entries[sid] = expiry

    async def release(self, crm_user_id: str) -> bool:
        if self._live(crm_user_id) or crm_user_id not in self._online:
            return False
        self._online.discard(crm_user_id)
        self._sockets.pop(crm_user_id, None)
        return True

    async def connected(self, crm_user_id: str) -> bool:
        return bool(self._live(crm_user_id))

    async def connected_among(self, crm_user_ids: list[str]) -> set[str]:
        return {u for u in crm_user_ids if self._live(u)}

    async def sids(self, crm_user_id: str) -> list[str]:
        return list(self._live(crm_user_id))

    async def online(self) -> list[str]:
        return list(self._online)


# KEYS[1] = the user's socket set, KEYS[2] = the online set; ARGV = now, user id.
_RELEASE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) > 0 then return 0 end
return redis.call('SREM', KEYS[2], ARGV[2])
"""


class RedisRegistry:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._release = redis.register_script(_RELEASE)

    def _key(self, crm_user_id: str) -> str:
        return f"{self.prefix}:sockets:{crm_user_id}"

    @property
    def _online_key(self) -> str:
        return f"{self.prefix}:online"

    async def opened(self, crm_user_id: str, sid: str, lease_ms: int) -> bool:
        key = self._key(crm_user_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {sid: now_ms() + lease_ms})
            pipe.pexpire(key, lease_ms * 4)
            pipe.sadd(self._online_key, crm_user_id)
            _, _, added = await pipe.execute()
        return bool(added)

    async def closed(self, crm_user_id: str, sid: str, grace_ms: int) -> None:
        await self.redis.zadd(self._key(crm_user_id), {sid: now_ms() + grace_ms}, xx=True)

    async def renew(self, sockets: dict[str, set[str]], lease_ms: int) -> None:
        if not sockets:
            return
        expiry = now_ms() + lease_ms
        async with self.redis.pipeline(transaction=False) as pipe:
            for crm_user_id, sids in sockets.items():
                if sids:
                    pipe.zadd(self._key(crm_user_id), dict.fromkeys(sids, expiry))
                    pipe.pexpire(self._key(crm_user_id), lease_ms * 4)
                    pipe.sadd(self._online_key, crm_user_id)
            await pipe.execute()

    async def release(self, crm_user_id: str) -> bool:
        keys = [self._key(crm_user_id), self._online_key]
        return bool(await self._release(keys=keys, args=[now_ms(), crm_user_id]))

    async def connected(self, crm_user_id: str) -> bool:
        return bool(await self.redis.zcount(self._key(crm_user_id), now_ms() + 1, "+inf"))

    async def connected_among(self, crm_user_ids: list[str]) -> set[str]:
        if not crm_user_ids:
            return set()
        now = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for crm_user_id in crm_user_ids:
                pipe.zcount(self._key(crm_user_id), now + 1, "+inf")
            counts = await pipe.execute()
        return {u for u, n in zip(crm_user_ids, counts, strict=True) if n}

    async def sids(self, crm_user_id: str) -> list[str]:
        raw = await self.redis.zrangebyscore(self._key(crm_user_id), now_ms() + 1, "+inf")
        return [s.decode() if isinstance(s, bytes) else s for s in raw]

    async def online(self) -> list[str]:
        raw = await self.redis.smembers(self._online_key)
        return [s.decode() if isinstance(s, bytes) else s for s in raw]


class FallbackRegistry:
    """Redis while it answers; this process's own sockets (always recorded) while not."""

    def __init__(self, redis: RedisRegistry, state: RedisState) -> None:
        self.redis = redis
        self.state = state
        self.local = MemoryRegistry()

    def _failed(self, e: BaseException) -> None:
        self.state.down(f"the socket registry failed: {e!r}")

    async def opened(self, crm_user_id: str, sid: str, lease_ms: int) -> bool:
        first = await self.local.opened(crm_user_id, sid, lease_ms)
        if self.state.up:
            try:
                return await self.redis.opened(crm_user_id, sid, lease_ms)
            except REDIS_ERRORS as e:
                self._failed(e)
        return first

    async def closed(self, crm_user_id: str, sid: str, grace_ms: int) -> None:
        await self.local.closed(crm_user_id, sid, grace_ms)
        if self.state.up:
            try:
                await self.redis.closed(crm_user_id, sid, grace_ms)
            except REDIS_ERRORS as e:
                self._failed(e)

    async def renew(self, sockets: dict[str, set[str]], lease_ms: int) -> None:
        await self.local.renew(sockets, lease_ms)
        if self.state.up:
            try:
                await self.redis.renew(sockets, lease_ms)
            except REDIS_ERRORS as e:
                self._failed(e)

    async def release(self, crm_user_id: str) -> bool:
        released = await self.local.release(crm_user_id)
        if self.state.up:
            try:
                return await self.redis.release(crm_user_id)
            except REDIS_ERRORS as e:
                self._failed(e)
        return released

    async def connected(self, crm_user_id: str) -> bool:
        if self.state.up:
            try:
                return await self.redis.connected(crm_user_id)
            except REDIS_ERRORS as e:
                self._failed(e)
        return await self.local.connected(crm_user_id)

    async def connected_among(self, crm_user_ids: list[str]) -> set[str]:
        if self.state.up:
            try:
                return await self.redis.connected_among(crm_user_ids)
            except REDIS_ERRORS as e:
                self._failed(e)
        return await self.local.connected_among(crm_user_ids)

    async def sids(self, crm_user_id: str) -> list[str]:
        if self.state.up:
            try:
                return await self.redis.sids(crm_user_id)
            except REDIS_ERRORS as e:
                self._failed(e)
        return await self.local.sids(crm_user_id)

    async def online(self) -> list[str]:
        if self.state.up:
            try:
                return await self.redis.online()
            except REDIS_ERRORS as e:
                self._failed(e)
        return await self.local.online()
