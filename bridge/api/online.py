"""Who is online, for participants in conversation objects and for the employee picker.

A person is online while a socket of theirs is open in any process (the realtime registry)
or while Matrix says one of their accounts is (the presence board, as pushed; a listing
never asks the homeserver). ``lastSeen`` is Matrix's last activity when known.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..presence_board import PRESENCE_BOARD
from .routes_directory import is_online, sockets_among


class Online:
    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def __call__(self, people: dict[str, set[str]]) -> dict[str, tuple[bool, float | None]]:
        mxids = sorted({m for accounts in people.values() for m in accounts})
        board = self.app.get(PRESENCE_BOARD)
        known, connected = await asyncio.gather(
            board.known(mxids) if board is not None else _nothing(),
            sockets_among(self.app, list(people)),
        )
        out: dict[str, tuple[bool, float | None]] = {}
        # Plain loops: one pass per participant of a listing (1,000 and more), most of them
        # with one account.
        for person_id, accounts in people.items():
            online = person_id in connected
            last_seen: float | None = None
            for mxid in accounts:
                if (state := known.get(mxid)) is None:
                    continue
                online = online or is_online(state)
                if (at := state.get("_at")) and (last_seen is None or at > last_seen):
                    last_seen = at
            out[person_id] = (online, last_seen)
        return out


async def _nothing() -> dict:
    return {}
