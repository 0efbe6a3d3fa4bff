"""A real Synapse delivers transactions to the running bridge."""

from __future__ import annotations

import pytest
from nio import RoomSendResponse

from bridge.context import DISPATCHER, EVENT_INDEX, IDS, MATRIX, TXN_LOG

from .conftest import Stack, unique
from .helpers import eventually, matrix_user

pytestmark = pytest.mark.integration


async def room_with_puppet_and_user(stack: Stack) -> tuple[str, object]:
    matrix = stack.app[MATRIX]
    puppet = stack.app[IDS].puppet_mxid(unique("u"))
    await matrix.register_puppet(puppet[1:].split(":")[0])
    user = await matrix_user(stack.synapse, unique("element"))
    room_id = await matrix.create_room(
        {"preset": "private_chat", "invite": [puppet, user.user_id], "name": "intake test"}
    )
    await matrix.join(room_id, as_user=puppet)
    await user.join(room_id)
    return room_id, user


async def test_message_in_room_with_puppet_is_recorded(stack: Stack) -> None:
    room_id, user = await room_with_puppet_and_user(stack)
    try:
        txns_before = await stack.app[TXN_LOG].count()
        resp = await user.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "hello bridge"}
        )
        assert isinstance(resp, RoomSendResponse), resp

        async def recorded():
            return await stack.app[EVENT_INDEX].get(resp.event_id)

        event = await eventually(recorded)
        assert event.room_id == room_id
        assert event.sender == user.user_id
        assert event.msgtype == "m.text"
        assert await stack.app[TXN_LOG].count() > txns_before
    finally:
        await user.close()


async def test_handler_failure_makes_synapse_retry(stack: Stack) -> None:
    room_id, user = await room_with_puppet_and_user(stack)
    calls: list[str] = []
    marker = unique("retry-me-")

    async def fails_once(event: dict) -> None:
        if event.get("content", {}).get("body") != marker:
            return
        calls.append(event["event_id"])
        if len(calls) == 1:
            raise RuntimeError("simulated handler failure")

    stack.app[DISPATCHER].on_timeline(fails_once)
    try:
        resp = await user.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": marker}
        )
        assert isinstance(resp, RoomSendResponse), resp

        async def handled_twice():
            return len(calls) >= 2

        # Synapse backs off after a failed transaction, then sends it again.
        await eventually(handled_twice, timeout=30)
        assert calls == [resp.event_id, resp.event_id]
        assert await stack.app[EVENT_INDEX].get(resp.event_id)
    finally:
        stack.app[DISPATCHER].remove(fails_once)
        # Synapse marked us down after the failure; a ping brings it back at once.
        await stack.app[MATRIX].ping()
        await user.close()


async def test_ping_round_trip(stack: Stack) -> None:
    assert await stack.app[MATRIX].ping() >= 0
