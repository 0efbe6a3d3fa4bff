"""Redis goes away: rate limits are still enforced, in-process, from the count Redis had;
one warning, not one per request; Redis is used again once it is back.

Runs its own bridge and a private Redis (fault_support): stopping the machine's Redis would
break the other tests.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from bridge.config import redis_prefix
from tests.fault_support import fault_stack
from tests.helpers import eventually

LIMIT = 6


async def _me(session, url: str, bearer: str) -> int:
    async with session.get(
        url + "/api/auth/me", headers={"Authorization": f"Bearer {bearer}"}
    ) as r:
        return r.status


async def test_limits_hold_while_redis_is_down_and_redis_is_used_again(tmp_path: Path) -> None:
    overrides = {
        "api.rate_limit.requests": LIMIT,
        "api.rate_limit.window_seconds": 600,
        "api.rate_limit.redis_retry_seconds": 1,
    }
    async with fault_stack(tmp_path, redis="private", **overrides) as fs:
        assert fs.redis is not None
        alice = await fs.directory.user("Alice Counted")
        bob = await fs.directory.user("Bob Later")
        prefix = f"{redis_prefix(fs.config)}:rl"
        async with aiohttp.ClientSession() as session:
            # Half the budget while Redis counts.
            for _ in range(LIMIT // 2):
                assert await _me(session, fs.url, fs.token(alice)) == 200
            fs.redis.stop()
            # The rest of it in-process, then refused: Redis's count was kept.
            statuses = [await _me(session, fs.url, fs.token(alice)) for _ in range(LIMIT)]
            assert statuses == [200] * (LIMIT - LIMIT // 2) + [429] * (LIMIT // 2), statuses
            log = fs.bridge.log_path.read_text()
            assert log.count("Redis rate limiting failed") == 1, log
            # Readiness says so, and keeps the process in service.
            async with session.get(fs.url + "/health/ready") as resp:
                ready = await resp.json()
                assert resp.status == 200 and ready["degraded"] is True, ready

            # Back: new counts go to Redis again.
            await fs.redis.start()
            await asyncio.sleep(1.2)
            client = aioredis.Redis.from_url(fs.redis.url)
            try:

                async def counted_in_redis() -> bool:
                    assert await _me(session, fs.url, fs.token(bob)) == 200
                    keys = [k async for k in client.scan_iter(f"{prefix}:{bob}:*")]
                    return bool(keys)

                await eventually(counted_in_redis, timeout=10, interval=0.3)
            finally:
                await client.aclose()
            assert "Redis rate limiting works again" in fs.bridge.log_path.read_text()
            assert await _me(session, fs.url, fs.token(alice)) == 429
