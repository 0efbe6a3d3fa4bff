"""Per-user, per-route rate limits: fixed windows in Redis when configured, else in-process.

Every answer carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset`` (seconds until the window ends); over the limit it is a 429 with
``Retry-After``. If Redis fails, the in-process counter takes over rather than failing
every request.
"""

from __future__ import annotations

import logging
import math
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..errors import RateLimited

log = logging.getLogger("bridge.api.ratelimit")


class RateLimiter:
    def __init__(
        self,
        requests: int,
        window: float,
        send_requests: int,
        redis: Redis | None = None,
        prefix: str = "crm-bridge:rl",
    ) -> None:
        self.requests = requests
        self.window = window
        self.send_requests = send_requests
        self.redis = redis
        self.prefix = prefix
        self._local: dict[str, tuple[int, int]] = {}

    def limit_for(self, route: str) -> int:
        return self.send_requests if route == "send" else self.requests

    async def _count(self, key: str, window_index: int) -> int:
        if self.redis is not None:
            full = f"{self.prefix}:{key}:{window_index}"
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.incr(full)
                    pipe.expire(full, math.ceil(self.window) + 1)
                    count, _ = await pipe.execute()
                return int(count)
            except (RedisError, OSError) as e:
                log.warning("Redis rate limiting failed, counting in-process: %s", e)
        current = self._local.get(key)
        count = current[1] + 1 if current and current[0] == window_index else 1
        self._local[key] = (window_index, count)
        if len(self._local) > 100000:
            self._local = {k: v for k, v in self._local.items() if v[0] == window_index}
        return count

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
            raise RateLimited(
                f"Too many requests; try again in {reset} seconds",
                headers={**headers, "Retry-After": str(reset)},
                extra={"retry_after_ms": reset * 1000},
            )
        return headers
