"""The typing throttle's order of writes, with the homeserver call as the one faked seam.

Its integration, against Synapse, is ``tests/test_realtime_limits.py``; what it cannot show
reliably is a start and a stop whose requests cross on the way, which is what this fakes.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from bridge.matrix.client import MatrixClient
from bridge.realtime.typing import TypingThrottle

ROOM, USER = "!room:hs", "@alice:hs"


class SlowStarts:
    """A homeserver whose typing starts take longer to arrive than its stops."""

    def __init__(self, start_delay: float = 0.05, fail_starts: int = 0) -> None:
        self.start_delay = start_delay
        self.fail_starts = fail_starts
        self.arrived: list[bool] = []

    async def set_typing(self, room_id: str, mxid: str, timeout_ms: int) -> None:
        typing = timeout_ms > 0
        if typing:
            await asyncio.sleep(self.start_delay)
            if self.fail_starts:
                self.fail_starts -= 1
                raise ConnectionError("homeserver unreachable")
        self.arrived.append(typing)


def throttle(hs: SlowStarts, interval: float = 3.0) -> TypingThrottle:
    return TypingThrottle(cast(MatrixClient, hs), timeout_ms=5000, interval=interval)


async def test_a_stop_sent_beside_a_start_arrives_after_it() -> None:
    # A socket's emits run concurrently: the stop is decided while the start is on its way.
    hs = SlowStarts()
    typing = throttle(hs)
    await asyncio.gather(typing.set(ROOM, USER, True), typing.set(ROOM, USER, False))
    assert hs.arrived == [True, False]
    await typing.close()


async def test_a_queued_write_superseded_by_a_later_one_is_skipped() -> None:
    hs = SlowStarts()
    typing = throttle(hs, interval=0.0)  # every decision is a write
    decisions = [True, False, True, False]
    await asyncio.gather(*(typing.set(ROOM, USER, wanted) for wanted in decisions))
    # The first start is in flight when the rest are decided; only the newest follows it.
    assert hs.arrived == [True, False]
    await typing.close()


async def test_a_failed_start_is_written_again_at_the_next_keystroke() -> None:
    hs = SlowStarts(start_delay=0.0, fail_starts=1)
    typing = throttle(hs)
    with pytest.raises(ConnectionError):
        await typing.set(ROOM, USER, True)
    # The throttle believes what the homeserver confirmed, not what it failed to hear.
    await typing.set(ROOM, USER, True)
    await typing.set(ROOM, USER, False)
    assert hs.arrived == [True, False]
    await typing.close()


async def test_a_flapping_client_costs_one_start_and_one_stop_and_ends_stopped() -> None:
    hs = SlowStarts(start_delay=0.01)
    typing = throttle(hs, interval=0.2)
    flaps: list[Any] = [typing.set(ROOM, USER, i % 2 == 0) for i in range(50)]
    await asyncio.gather(*flaps)
    await typing.set(ROOM, USER, False)
    await asyncio.sleep(0.4)  # past the interval: no trailing start
    assert hs.arrived == [True, False]
    await typing.close()
