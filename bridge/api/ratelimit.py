"""Per-user, per-route rate limits: fixed windows in Redis when configured, else in-process.

Every answer carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset`` (seconds until the window ends); over the limit it is a 429 with
``Retry-After``. Keys live under the deployment's Redis prefix, so two deployments sharing
a Redis never throttle each other.

If Redis fails, the limiter is ``degraded``: it counts in-process (each process enforcing
the limit on its own), logs one warning, and tries Redis again every ``retry_seconds``. The
last count seen in Redis is kept per key, so a user over the limit stays over it when Redis
goes away.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..errors import RateLimited

log = logging.getLogger("bridge.api.ratelimit")

_LOCAL_KEYS = 100000


class RateLimiter:
    def __init__(
        self,
        requests: int,
        window: float,
        send_requests: int,
        redis: Redis | None = None,
        prefix: str = "crm-bridge:rl",
        retry_seconds: float = 5.0,
    ) -> None:
        self.requests = requests
        self.window = window
        self.send_requests = send_requests
        self.redis = redis
        self.prefix = prefix
        self.retry_seconds = retry_seconds
        # Redis failed; counting in-process until it answers again (readiness reports it).
        self.degraded = False
        self._retry_at = 0.0
        # "user:route" -> (window, count): past _LOCAL_KEYS, keys of older windows go.
        self._local: dict[str, tuple[int, int]] = {}
        # Told the route of every request refused (metrics), when set.
        self.on_limited: Callable[[str], None] | None = None

    def limit_for(self, route: str) -> int:
        return self.send_requests if route == "send" else self.requests

    def _use_redis(self) -> bool:
        if self.redis is None:
            return False
        if not self.degraded:
            return True
        if time.monotonic() < self._retry_at:
            return False
        # One request probes Redis; the others keep counting in-process meanwhile.
        self._retry_at = time.monotonic() + self.retry_seconds
        return True

    def _failed(self, e: Exception) -> None:
        self._retry_at = time.monotonic() + self.retry_seconds
        if not self.degraded:
            self.degraded = True
            log.warning("Redis rate limiting failed; counting in-process until it is back: %s", e)

    async def probe(self) -> None:
        """While degraded, ask Redis now (readiness does, so it does not wait for a request)."""
        if not self.degraded or self.redis is None:
            return
        try:
            await asyncio.wait_for(self.redis.ping(), timeout=1.0)
        except (RedisError, OSError, TimeoutError) as e:
            self._failed(e)
            return
        self.degraded = False
        log.warning("Redis rate limiting works again")

    async def _redis_count(self, key: str, window_index: int) -> int | None:
        assert self.redis is not None
        full = f"{self.prefix}:{key}:{window_index}"
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.incr(full)
                pipe.expire(full, math.ceil(self.window) + 1)
                count, _ = await pipe.execute()
        except (RedisError, OSError) as e:
            self._failed(e)
            return None
        if self.degraded:
            self.degraded = False
            log.warning("Redis rate limiting works again")
        return int(count)

    async def _count(self, key: str, window_index: int) -> int:
        current = self._local.get(key)
        local = current[1] + 1 if current and current[0] == window_index else 1
        shared = await self._redis_count(key, window_index) if self._use_redis() else None
        # Never below what this process counted (hits made while Redis was away count too).
        count = local if shared is None else max(shared, local)
        self._local[key] = (window_index, count)
        if len(self._local) > _LOCAL_KEYS:
            self._local = {k: v for k, v in self._local.items() if v[0] == window_index}
        return count

    def spent(self, subject: str, route: str) -> bool:
        """Whether the last count this process saw already used up the current window: what
        the next :meth:`hit` will refuse, known without asking Redis."""
        seen = self._local.get(f"{subject}:{route}")
        window_index = int(time.time() // self.window)
        return seen is not None and seen[0] == window_index and seen[1] >= self.limit_for(route)

    async def hit(self, subject: str, route: str) -> dict[str, str]:
        """Count one request; the headers to send, or :class:`RateLimited` over the limit."""
        now = time.time()
        window_index = int(now // self.window)
        reset = max(1, math.ceil((window_index + 1) * self.window - now))
        limit = self.limit_for(route)
        count = await self._count(f"{subject}:{route}", window_index)
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - count)),
            "X-RateLimit-Reset": str(reset),
        }
        if count > limit:
            if self.on_limited is not None:
                self.on_limited(route)
            raise RateLimited(
                f"Too many requests; try again in {reset} seconds",
                headers={**headers, "Retry-After": str(reset)},
                extra={"retryAfter": reset, "retry_after_ms": reset * 1000},
            )
        return headers


RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
