"""Small test helpers: waiting for a condition, and a plain Matrix user (Element-like)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nio import AsyncClient, LoginResponse

from bridge.devstack.synapse import SynapseProcess

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]], timeout: float = 15.0, interval: float = 0.1
) -> T:
    """Poll ``check`` until it returns something truthy, or fail with its last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


async def matrix_user(synapse: SynapseProcess, localpart: str) -> AsyncClient:
    """A normal (non-appservice) Matrix account, logged in with matrix-nio like Element."""
    password = f"pw-{localpart}"
    await synapse.register_user(localpart, password)
    client = AsyncClient(synapse.url, f"@{localpart}:{synapse.server_name}")
    resp = await client.login(password)
    assert isinstance(resp, LoginResponse), resp
    return client
