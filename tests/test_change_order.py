"""Edits and deletes reach a socket after the message they change, never before it.

A message goes to sockets from each process's delivery lane (bridge/realtime/log.py), which
reads the index first; a delete or edit that arrived meanwhile used to be emitted at once,
so a socket got ``message_deleted`` for a message it had not been shown, and then the
message, which then stayed on its screen. Here the lane is slowed after its read of the
index (a loaded database; the one seam this test fakes) while an Element user sends a
message and deletes it at once: the socket gets the message, then the delete.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nio import RoomRedactResponse, RoomSendResponse

from bridge.context import EVENT_INDEX
from bridge.ids import conversation_id_for_room, message_id_for_event
from tests.api_support import token
from tests.conftest import unique
from tests.helpers import eventually, matrix_user
from tests.realtime_support import Directory, Recorder
from tests.relations_support import accept_invite, person, users

pytestmark = pytest.mark.integration

SLOW_READ_S = 2.0


def _slowed(read: Any) -> Any:
    async def slow(*args: Any, **kwargs: Any) -> Any:
        rows = await read(*args, **kwargs)
        await asyncio.sleep(SLOW_READ_S)
        return rows

    return slow


async def test_delete_never_overtakes_its_message(stack, monkeypatch) -> None:
    app, url = stack.app, stack.bridge_url
    directory = Directory(url, stack.config["admin_api.token"])
    element = await matrix_user(stack.synapse, unique("el"))
    try:
        carol_id = await person(directory, "Carol Element", "employee", matrix_id=element.user_id)
        alice_id = await person(directory, "Alice", "employee")
        project = await directory.project(unique("p"), "Order", [alice_id, carol_id], carol_id)
        room_id = project["roomId"]
        cid = conversation_id_for_room(room_id)
        await accept_invite(element, room_id)
        (alice,) = await users(app, alice_id)
        sock = await Recorder("alice").connect(url, token(app, alice))
        try:
            index = app[EVENT_INDEX]
            monkeypatch.setattr(index, "between", _slowed(index.between))
            content = {"msgtype": "m.text", "body": "gone at once"}
            sent = await element.room_send(room_id, "m.room.message", content)
            assert isinstance(sent, RoomSendResponse), sent
            # Deleted once the bridge indexed it, while the lane is still delivering it.
            await eventually(lambda: index.get(sent.event_id), timeout=20, interval=0.02)
            redacted = await element.room_redact(room_id, sent.event_id)
            assert isinstance(redacted, RoomRedactResponse), redacted
            message_id = message_id_for_event(sent.event_id)
            await sock.wait("message_deleted", lambda d: d["messageId"] == message_id)
            await asyncio.sleep(SLOW_READ_S + 1)  # a message still in the lane lands by now
            order = [
                e for e, d in sock.events
                if isinstance(d, dict) and d.get("conversationId") == cid
                and (d.get("_id") == message_id or d.get("messageId") == message_id)
                and e in ("new_message", "message_deleted")
            ]  # fmt: skip
            assert order[-1] == "message_deleted", order
            assert order.count("message_deleted") == 1, order
        finally:
            await sock.close()
    finally:
        await element.close()
