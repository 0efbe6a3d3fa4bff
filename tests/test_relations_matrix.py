"""Matrix → CRM: what an Element user does to messages shows in REST history and on sockets.

matrix-nio plays Element (a linked account of a CRM admin, and a plain Matrix account);
python-socketio and the npm socket.io-client are the CRM frontends.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from nio import RoomPutStateResponse, RoomRedactResponse, RoomSendResponse

from bridge.context import EVENT_INDEX
from bridge.ids import conversation_id_for_room, message_id_for_event
from tests.api_support import api_for, token
from tests.conftest import unique
from tests.helpers import eventually, matrix_user
from tests.realtime_support import Directory, Recorder, settle
from tests.relations_support import NodeWatcher, accept_invite, person, users

pytestmark = pytest.mark.integration


async def send(client: Any, room_id: str, content: dict[str, Any], kind: str = "m.room.message"):
    resp = await client.room_send(room_id, kind, content)
    assert isinstance(resp, RoomSendResponse), resp
    return resp.event_id


def text(body: str, **extra: Any) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body, **extra}


async def test_element_edits_reacts_replies_threads_pins_and_deletes(stack) -> None:
    app, url = stack.app, stack.bridge_url
    directory = Directory(url, stack.config["admin_api.token"])
    element = await matrix_user(stack.synapse, unique("el"))
    # A second Element user: an employee's linked account (a stranger would be removed from
    # a project room by the directory's repair).
    stranger = await matrix_user(stack.synapse, unique("st"))
    carol_id = await person(directory, "Carol Admin", "admin", matrix_id=element.user_id)
    dan_id = await person(directory, "Dan", "employee", matrix_id=stranger.user_id)
    alice_id = await person(directory, "Alice", "employee")
    members = [alice_id, carol_id, dan_id]
    project = await directory.project(unique("p"), "Relations", members, carol_id)
    room_id = project["roomId"]
    cid = conversation_id_for_room(room_id)
    alice, carol = await users(app, alice_id, carol_id)
    a_sock = await Recorder("alice").connect(url, token(app, alice))
    node = await NodeWatcher(url, token(app, alice)).start()
    try:
        await accept_invite(element, room_id)
        await accept_invite(stranger, room_id)
        async with api_for(app, url, alice) as a:
            path = f"/api/chat/messages/{cid}"

            async def page() -> dict[str, dict[str, Any]]:
                status, body, _ = await a.get(path)
                assert status == 200, body
                return {m["_id"]: m for m in body["messages"]}

            async def listed() -> dict[str, Any]:
                return next(
                    c for c in (await a.get("/api/chat/conversations"))[1] if c["_id"] == cid
                )

            root_event = await send(element, room_id, text("hello team"))
            root = message_id_for_event(root_event)
            await eventually(lambda: app[EVENT_INDEX].get(root_event))
            fresh = (await page())[root]
            assert fresh["edited"] is False and fresh["editedAt"] is None
            assert fresh["replyTo"] is None and fresh["mentions"] == [] and fresh["reactions"] == []
            assert fresh["threadId"] is None and fresh["threadCount"] == 0
            assert fresh["isPinned"] is False and fresh["sender"]["_id"] == carol_id

            # An edit: the same message with the new text, never a message of its own.
            new = text("hello team, edited", **{"m.mentions": {"user_ids": [alice.mxid]}})
            await send(element, room_id, text(
                "* hello team, edited", **{
                    "m.new_content": new,
                    "m.relates_to": {"rel_type": "m.replace", "event_id": root_event},
                },
            ))  # fmt: skip
            update = await a_sock.wait("message_update", lambda m: m["_id"] == root and m["edited"])
            assert update["content"] == "hello team, edited"
            assert update["conversationId"] == cid and update["editedAt"]
            assert update["mentions"] == [alice_id]
            history = await page()
            assert list(history) == [root]
            assert history[root]["content"] == "hello team, edited" and history[root]["edited"]
            conversation = await listed()
            assert conversation["lastMessage"]["_id"] == root
            assert conversation["lastMessage"]["content"] == "hello team, edited"
            assert conversation["unreadCount"] == 1

            # Reactions, from the linked account and a plain Matrix user; and one taken back.
            def reaction(key: str) -> dict[str, Any]:
                return {
                    "m.relates_to": {"rel_type": "m.annotation", "event_id": root_event, "key": key}
                }

            thumbs = await send(element, room_id, reaction("👍"), "m.reaction")
            await send(stranger, room_id, reaction("👍"), "m.reaction")
            party = await send(stranger, room_id, reaction("🎉"), "m.reaction")

            def reactions_are(want: dict[str, int]):
                def check(m: dict[str, Any]) -> bool:
                    got = {r["key"]: r["count"] for r in m["reactions"]}
                    return m["_id"] == root and got == want

                return check

            got = await a_sock.wait("message_update", reactions_are({"👍": 2, "🎉": 1}))
            by_key = {r["key"]: r for r in got["reactions"]}
            assert set(by_key["👍"]["users"]) == {carol_id, dan_id}
            assert by_key["👍"]["me"] is False
            assert (await page())[root]["reactions"] == got["reactions"]
            # The same counts went by while the reactions arrived: wait for what came after.
            since = len(a_sock.events)
            assert isinstance(await stranger.room_redact(room_id, party), RoomRedactResponse)
            await a_sock.wait("message_update", reactions_are({"👍": 2}), since=since)
            since = len(a_sock.events)
            assert isinstance(await element.room_redact(room_id, thumbs), RoomRedactResponse)
            await a_sock.wait("message_update", reactions_are({"👍": 1}), since=since)
            assert [r["users"] for r in (await page())[root]["reactions"]] == [[dan_id]]
            assert (await listed())["unreadCount"] == 1  # reactions are not unread

            # A reply names what it answers, with the quoted message's latest text.
            reply_event = await send(stranger, room_id, text(
                "welcome!", **{"m.relates_to": {"m.in_reply_to": {"event_id": root_event}}}
            ))  # fmt: skip
            reply = message_id_for_event(reply_event)
            got = await a_sock.wait("new_message", lambda m: m["_id"] == reply)
            assert got["replyTo"] == {
                "_id": root, "content": "hello team, edited",
                "sender": {"_id": carol_id, "name": "Carol Admin", "email": carol.email,
                           "avatar": None, "firstName": "Carol", "lastName": "Admin",
                           "profileImage": None, "position": None},
            }  # fmt: skip
            assert got["sender"]["_id"] == dan_id
            assert (await page())[reply]["replyTo"]["_id"] == root

            # A thread reply stays in its thread (as in Element): the root counts it.
            thread_event = await send(element, room_id, text(
                "in a thread", **{"m.relates_to": {
                    "rel_type": "m.thread", "event_id": root_event, "is_falling_back": True,
                    "m.in_reply_to": {"event_id": root_event},
                }},
            ))  # fmt: skip
            got = await a_sock.wait(
                "message_update", lambda m: m["_id"] == root and m["threadCount"] == 1
            )
            assert got["threadLastReplyAt"]
            history = await page()
            assert list(history) == [root, reply]
            assert history[root]["threadCount"] == 1
            thread_id = message_id_for_event(thread_event)
            assert not a_sock.of("new_message", lambda m: m["_id"] == thread_id)
            conversation = await listed()
            assert conversation["lastMessage"]["_id"] == reply
            assert conversation["unreadCount"] == 2

            # Pins (m.room.pinned_events, which the admin's power level allows).
            pinned = await element.room_put_state(
                room_id, "m.room.pinned_events", {"pinned": [root_event]}
            )
            assert isinstance(pinned, RoomPutStateResponse), pinned
            await a_sock.wait("message_update", lambda m: m["_id"] == root and m["isPinned"])
            assert (await page())[root]["isPinned"] is True
            status, pinned_body, _ = await a.get(f"/api/chat/pinned-messages/{cid}")
            pins = pinned_body["data"]
            assert status == 200 and [m["_id"] for m in pins] == [root]
            assert pins[0]["content"] == "hello team, edited"
            mark = len(a_sock.events)
            unpinned = await element.room_put_state(room_id, "m.room.pinned_events", {"pinned": []})
            assert isinstance(unpinned, RoomPutStateResponse), unpinned
            await after(
                a_sock, mark, "message_update", lambda m: m["_id"] == root and not m["isPinned"]
            )
            assert (await a.get(f"/api/chat/pinned-messages/{cid}"))[1]["data"] == []

            # Deleting one's own message: gone from history, lastMessage falls back.
            await node.stop_on(reply)
            mark = len(a_sock.events)
            assert isinstance(await stranger.room_redact(room_id, reply_event), RoomRedactResponse)
            got = await a_sock.wait("message_deleted", lambda d: d["messageId"] == reply)
            assert got == {"conversationId": cid, "messageId": reply}
            assert list(await page()) == [root]

            async def fell_back() -> bool:
                c = await listed()
                return c["lastMessage"]["_id"] == root and c["unreadCount"] == 1

            await eventually(fell_back)
            update = await after(
                a_sock, mark, "conversation_update",
                lambda c: c.get("unreadCount") == 1 and c.get("_id") == cid,
            )  # fmt: skip
            assert update["lastMessage"] == "hello team, edited"

            # The npm client saw the edit, the reactions and the deletion too.
            await node.done()
            assert any(m["_id"] == root and m["edited"] for m in node.of("message_update"))
            assert any(
                {r["key"]: r["count"] for r in m["reactions"]} == {"👍": 2, "🎉": 1}
                for m in node.of("message_update")
            )
            assert {"conversationId": cid, "messageId": reply} in node.of("message_deleted")

            # A moderator (the admin, in Element) deletes someone else's message.
            status, sent, _ = await a.post(
                "/api/chat/send", {"conversationId": cid, "content": "from alice"}
            )
            assert status == 201
            await eventually(lambda: app[EVENT_INDEX].get(sent["eventId"]))
            assert isinstance(
                await element.room_redact(room_id, sent["eventId"]), RoomRedactResponse
            )
            await a_sock.wait("message_deleted", lambda d: d["messageId"] == sent["_id"])
            assert list(await page()) == [root]
            await eventually(lambda: _last_is(a, cid, root))
            await settle(0.5)
            # Element marks a reaction read: that reads up to the message before it.
            check = await send(stranger, room_id, reaction("✅"), "m.reaction")
            await stranger.room_read_markers(room_id, check, check)
            got = await a_sock.wait("messages_read", lambda r: r["readBy"]["user"] == dan_id)
            assert root in got["messageIds"]
            async with api_for(app, url, dan_id) as dn:

                async def dan_read_all() -> bool:
                    listing = (await dn.get("/api/chat/conversations"))[1]
                    return next(c for c in listing if c["_id"] == cid)["unreadCount"] == 0

                await eventually(dan_read_all)
            # Edits, reactions, redactions and state are never new messages.
            news = {m["_id"] for m in a_sock.of("new_message")}
            assert news == {root, reply, sent["_id"]}, (root, reply, sent["_id"], news)
    finally:
        await node.close()
        await a_sock.close()
        await element.close()
        await stranger.close()


async def after(recorder: Recorder, mark: int, event: str, where: Any) -> Any:
    """The first ``event`` matching ``where`` received after the first ``mark`` events."""

    async def check() -> Any:
        found = [d for e, d in recorder.events[mark:] if e == event and where(d)]
        return found[0] if found else None

    return await eventually(check, timeout=30, interval=0.05)


async def _last_is(api: Any, cid: str, message_id: str) -> bool:
    listing = (await api.get("/api/chat/conversations"))[1]
    mine = next(c for c in listing if c["_id"] == cid)
    return (mine["lastMessage"] or {}).get("_id") == message_id


async def test_a_pin_handled_twice_is_announced_once(stack) -> None:
    """The same pin state event dispatched again (a transaction redelivered after a crash
    before it was recorded, or handled by a standby while the old receiver finished it):
    the pin stays, and ``message_pinned`` / ``message_update`` go out once."""
    app, url, config = stack.app, stack.bridge_url, stack.config
    directory = Directory(url, config["admin_api.token"])
    element = await matrix_user(stack.synapse, unique("el"))
    carol_id = await person(directory, "Carol Pins", "admin", matrix_id=element.user_id)
    alice_id = await person(directory, "Alice Pins", "employee")
    project = await directory.project(unique("p"), "Pins twice", [alice_id, carol_id], carol_id)
    room_id = project["roomId"]
    cid = conversation_id_for_room(room_id)
    alice, _ = await users(app, alice_id, carol_id)
    a_sock = await Recorder("alice").connect(url, token(app, alice))
    try:
        await accept_invite(element, room_id)
        root_event = await send(element, room_id, text("pin me"))
        root = message_id_for_event(root_event)
        await eventually(lambda: app[EVENT_INDEX].get(root_event))
        pinned = await element.room_put_state(
            room_id, "m.room.pinned_events", {"pinned": [root_event]}
        )
        assert isinstance(pinned, RoomPutStateResponse), pinned
        await a_sock.wait("message_pinned", lambda m: m["messageId"] == root)
        await a_sock.wait("message_update", lambda m: m["_id"] == root and m["isPinned"])
        await settle(1.0)
        mark = len(a_sock.events)

        # The homeserver's own copy of the event, dispatched again in a new transaction.
        homeserver = str(config["homeserver.address"]).rstrip("/")
        as_auth = {"Authorization": f"Bearer {config['appservice.as_token']}"}
        hs_auth = {"Authorization": f"Bearer {config['appservice.hs_token']}"}
        async with aiohttp.ClientSession() as session:
            get = f"{homeserver}/_matrix/client/v3/rooms/{room_id}/event/{pinned.event_id}"
            async with session.get(get, headers=as_auth) as resp:
                assert resp.status == 200, await resp.text()
                event = {**(await resp.json()), "room_id": room_id}
            put = f"{url}/_matrix/app/v1/transactions/{unique('again')}"
            async with session.put(put, json={"events": [event]}, headers=hs_auth) as resp:
                assert resp.status == 200, await resp.text()
        await settle(2.0)
        again = [
            name for name, data in a_sock.events[mark:]
            if name in ("message_pinned", "message_unpinned", "message_update")
        ]  # fmt: skip
        assert again == []
        status, body, _ = await api_get(app, url, alice, f"/api/chat/pinned-messages/{cid}")
        assert status == 200 and [m["_id"] for m in body["data"]] == [root]
    finally:
        await a_sock.close()


async def api_get(app: Any, url: str, user: Any, path: str) -> tuple[int, Any, Any]:
    async with api_for(app, url, user) as api:
        return await api.get(path)
