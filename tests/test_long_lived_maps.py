"""Long-lived maps stay bounded: each map's cap or pruning rule, driven past it.

The stores behind them are faked (a narrow seam): what is checked is the map's size, not
what the store answers. The presence board's queue is in test_presence_board.py, open
gaps in test_intake_gaps.py."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from bridge.chat import service as service_module
from bridge.chat.service import ChatService
from bridge.context import CONVERSATIONS, USERS
from bridge.realtime import ephemeral
from bridge.realtime.ephemeral import Relays


class Conversations:
    async def get_by_room(self, room_id: str) -> Any:
        return object()


async def test_conversation_identities_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "_BY_ROOM_CAP", 5)
    app = web.Application()
    app[CONVERSATIONS] = Conversations()  # type: ignore[misc]
    service = ChatService(app)
    for i in range(23):
        assert await service.conversation_by_room(f"!r{i}:hs") is not None
        assert len(service._by_room) <= 5


class Users:
    async def get_by_mxid(self, mxid: str) -> None:
        return None  # a Matrix-only user


async def test_relays_remember_only_users_online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ephemeral, "_ONLINE_CAP", 4)
    app = web.Application()
    app[USERS] = Users()  # type: ignore[misc]
    relays = Relays(app, None, None)  # type: ignore[arg-type]
    announced: list[tuple[str, bool]] = []

    async def person(mxid: str) -> tuple[str, dict[str, Any]]:
        return mxid, {"name": mxid}

    async def announce(person_id: str, _: Any, __: Any, online: bool) -> None:
        announced.append((person_id, online))

    async def connected(crm_user_id: str) -> bool:
        return False

    relays._person = person  # type: ignore[method-assign]
    relays.announce = announce  # type: ignore[method-assign]

    async def presence(event: dict[str, Any]) -> None:
        await relays.presence(event, connected)

    for i in range(3):
        await presence({"sender": f"@e{i}:hs", "content": {"presence": "online"}})
    await presence({"sender": "@e0:hs", "content": {"presence": "offline"}})
    assert relays._online == {"@e1:hs", "@e2:hs"}  # offline is absence
    await presence({"sender": "@e0:hs", "content": {"presence": "offline"}})
    assert announced.count(("@e0:hs", False)) == 1  # told once
    for i in range(10, 30):
        await presence({"sender": f"@e{i}:hs", "content": {"presence": "online"}})
        assert len(relays._online) <= 4
    assert len(announced) == 3 + 1 + 20


async def test_relays_keep_only_rooms_with_typers() -> None:
    class Rooms:
        async def get_by_room(self, room_id: str) -> Any:
            return type("C", (), {"conversation_id": room_id})()

    app = web.Application()
    app[CONVERSATIONS] = Rooms()  # type: ignore[misc]
    relays = Relays(app, None, None)  # type: ignore[arg-type]

    async def person(mxid: str) -> tuple[str, dict[str, Any]]:
        return mxid, {}

    async def others(room_id: str, person_id: str) -> list[str]:
        return []

    relays._person = person  # type: ignore[method-assign]
    relays._others = others  # type: ignore[method-assign]
    for i in range(50):
        room = f"!r{i}:hs"
        await relays.typing({"room_id": room, "content": {"user_ids": ["@a:hs"]}})
        await relays.typing({"room_id": room, "content": {"user_ids": []}})
    assert relays._typing == {}
