"""The presence board on the machine's Redis, with the homeserver's presence as the faked
seam (what a request would cost is counted against a real Synapse in test_scale_roles.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from bridge.context import MATRIX
from bridge.presence_board import RATE, PresenceBoard
from tests.conftest import REDIS_URL, unique
from tests.helpers import eventually


class Homeserver:
    """``get_presence`` that, like a socket opening meanwhile, makes the bridge forget the
    user's presence while the answer is being recorded."""

    def __init__(self, forget: bool = True) -> None:
        self.board: PresenceBoard | None = None
        self.forget = forget
        self.forgets: list[asyncio.Task[None]] = []
        self.asked: list[tuple[float, str]] = []

    async def get_presence(self, mxid: str) -> dict[str, Any]:
        assert self.board is not None
        self.asked.append((asyncio.get_running_loop().time(), mxid))
        if self.forget:
            # Runs at the board's next await: its Redis write of this very answer.
            self.forgets.append(asyncio.create_task(self.board.forget(mxid)))
        return {"presence": "online", "currently_active": True, "last_active_ago": 1000}


async def test_reads_never_ask_and_the_refresh_keeps_its_rate() -> None:
    redis = Redis.from_url(REDIS_URL)
    homeserver = Homeserver(forget=False)
    app = web.Application()
    app[MATRIX] = homeserver  # type: ignore[misc]
    prefix = unique("presence-test")
    board = homeserver.board = PresenceBoard(app, prefix, lambda: redis)
    mxids = [f"@{unique('u')}:localhost" for _ in range(60)]
    refresh = asyncio.create_task(board.refresh())
    try:
        # Unknown users read as unknown; the read itself asked nobody.
        assert await board.get_many(mxids) == {m: {} for m in mxids}
        await asyncio.sleep(1.0)
        done_in_1s = len(homeserver.asked)
        assert 8 <= done_in_1s <= RATE + 8, done_in_1s  # one batch may start early
        await eventually(lambda: _true(len(homeserver.asked) >= len(mxids)), timeout=10)
        times = [t for t, _ in homeserver.asked]
        span = times[-1] - times[0]
        assert span >= (len(mxids) - 8) / RATE - 0.2, span
        found = await board.get_many(mxids)
        assert {m: found[m]["presence"] for m in mxids} == dict.fromkeys(mxids, "online")
        await asyncio.sleep(0.5)
        assert len(homeserver.asked) == len(mxids)  # fresh now: nobody asked twice
    finally:
        refresh.cancel()
        await redis.delete(f"{prefix}:presence")
        await redis.aclose()


async def test_a_presence_forgotten_while_it_is_recorded_is_asked_again() -> None:
    redis = Redis.from_url(REDIS_URL)
    homeserver = Homeserver()
    app = web.Application()
    app[MATRIX] = homeserver  # type: ignore[misc]
    prefix = unique("presence-test")
    board = homeserver.board = PresenceBoard(app, prefix, lambda: redis)
    mxids = [f"@{unique('u')}:localhost" for _ in range(3)]
    refresh = asyncio.create_task(board.refresh())
    try:
        await board.get_many(mxids)
        await eventually(lambda: _true(len(homeserver.forgets) >= 2 * len(mxids)), timeout=10)
        # Each forget queued the user first again: asked twice, recorded in the end.
        homeserver.forget = False
        await asyncio.gather(*homeserver.forgets)

        async def recorded() -> bool:
            known = await board._read(mxids)
            return all(known.get(m) for m in mxids)

        await eventually(recorded, timeout=10)
        found = await board.get_many(mxids)
        assert {m: found[m]["presence"] for m in mxids} == dict.fromkeys(mxids, "online")
    finally:
        refresh.cancel()
        await redis.delete(f"{prefix}:presence")
        await redis.aclose()


async def _true(value: bool) -> bool:
    return value
