"""The DM power-level repair marks a room done only when it is (or cannot be: 403, 404);
a homeserver failure leaves it for the next pass. Unit test: the seams are the room fix and
the conversation store; the integration test is in test_crm_permissions.py."""

from __future__ import annotations

import pytest
from aiohttp import web

from bridge.api import dm_levels
from bridge.context import CONVERSATIONS
from bridge.matrix.homeserver import MatrixError


class _Store:
    def __init__(self, rooms: list[str]) -> None:
        self.version = {room: 0 for room in rooms}

    async def directs_below(self, version: int, limit: int = 500) -> list[str]:
        return sorted(r for r, v in self.version.items() if v < version)[:limit]

    async def set_levels_version(self, room_id: str, version: int) -> None:
        self.version[room_id] = version


async def test_only_done_or_unfixable_rooms_are_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    store = _Store(["!ok", "!gone", "!refused", "!busy", "!flaky"])
    failures = {
        "!gone": [MatrixError(404, "M_NOT_FOUND", "gone")],
        "!refused": [MatrixError(403, "M_FORBIDDEN", "no")],
        "!busy": [MatrixError(500, "M_UNKNOWN", "internal")] * 2,
        "!flaky": [MatrixError(500, "M_UNKNOWN", "internal")],
    }

    async def fix_room(app: web.Application, room_id: str) -> bool:
        if failures.get(room_id):
            raise failures[room_id].pop(0)
        return True

    monkeypatch.setattr(dm_levels, "fix_room", fix_room)
    app = web.Application()
    app[CONVERSATIONS] = store  # type: ignore[assignment]
    assert await dm_levels.fix_all(app) == (3, 2)
    assert sorted(await store.directs_below(dm_levels.LEVELS_VERSION)) == ["!busy", "!flaky"]
    # The duty passes again until every room is done.
    await dm_levels.run(app, delay=0.01)
    assert await store.directs_below(dm_levels.LEVELS_VERSION) == []
