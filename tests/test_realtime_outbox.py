"""The Redis manager's outbox: emits are published in order, pipelined, without the emitter
waiting; closing publishes what is queued; a failed publish turns the state down as before."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis.asyncio import Redis

from bridge.realtime.manager import BridgeRedisManager
from bridge.redis_state import RedisState
from tests.conftest import REDIS_URL, unique

pytestmark = pytest.mark.integration


async def test_a_burst_is_published_in_order_and_flushed_on_close() -> None:
    channel = unique("outbox")
    listener = Redis.from_url(REDIS_URL)
    pubsub = listener.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    manager = BridgeRedisManager(REDIS_URL, channel, RedisState())
    try:
        for i in range(300):
            await manager._publish({"method": "emit", "event": "n", "data": i})
        await manager.close()  # returns once the queue is written
        got: list[int] = []
        deadline = asyncio.get_running_loop().time() + 10
        while len(got) < 300 and asyncio.get_running_loop().time() < deadline:
            message = await pubsub.get_message(timeout=1)
            if message is not None:  # None: the subscription's own confirmation, or nothing
                got.append(json.loads(message["data"])["data"])
        assert got == list(range(300))
        assert manager.state.up
    finally:
        await pubsub.aclose()
        await listener.aclose()


async def test_an_unreachable_redis_turns_the_state_down_and_empties_the_queue() -> None:
    state = RedisState()
    manager = BridgeRedisManager("redis://127.0.0.1:1/0", unique("outbox"), state)
    for i in range(5):
        await manager._publish({"method": "emit", "event": "n", "data": i})
    for _ in range(200):
        if not state.up:
            break
        await asyncio.sleep(0.02)
    assert not state.up
    await manager.flush(timeout=2)
    assert manager._unsent == 0
    # While down, nothing is queued: the emit reached this process's sockets only.
    await manager._publish({"method": "emit", "event": "n", "data": 5})
    assert manager._unsent == 0
    await manager.close()
