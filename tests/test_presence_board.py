"""The presence board on the machine's Redis, with the homeserver's presence as the faked seam."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from bridge.context import MATRIX
from bridge.presence_board import PresenceBoard
from tests.conftest import REDIS_URL, unique


class Homeserver:
    """``get_presence`` that, like a socket opening meanwhile, makes the bridge forget the
    user's presence while the answer is being recorded."""

    def __init__(self) -> None:
        self.board: PresenceBoard | None = None
        self.forgets: list[asyncio.Task[None]] = []

    async def get_presence(self, mxid: str) -> dict[str, Any]:
        assert self.board is not None
        # Runs at the board's next await: its Redis write of this very answer.
        self.forgets.append(asyncio.create_task(self.board.forget(mxid)))
        return {"presence": "online", "currently_active": True, "last_active_ago": 1000}


async def test_a_presence_forgotten_while_it_is_recorded_is_still_answered() -> None:
    redis = Redis.from_url(REDIS_URL)
    homeserver = Homeserver()
    app = web.Application()
    app[MATRIX] = homeserver  # type: ignore[misc]
    prefix = unique("presence-test")
    board = homeserver.board = PresenceBoard(app, prefix, lambda: redis)
    mxids = [f"@{unique('u')}:localhost" for _ in range(3)]
    try:
        found = await board.get_many(mxids)
        await asyncio.gather(*homeserver.forgets)
        assert len(homeserver.forgets) == len(mxids)
        assert {m: found[m]["presence"] for m in mxids} == dict.fromkeys(mxids, "online")
        # Forgotten all the same: the next read asks the homeserver again.
        assert await board._read(mxids) == {}
    finally:
        await redis.delete(f"{prefix}:presence")
        await redis.aclose()
