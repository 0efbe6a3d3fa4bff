"""The seed's Socket.IO events against a real Synapse: two CRM users on sockets, one
Element-like Matrix user (matrix-nio), and an outsider who must see none of it."""

from __future__ import annotations

from datetime import UTC, datetime

import aiohttp
import socketio
from nio import PresenceGetResponse, RoomSendResponse

from bridge.context import CONVERSATIONS, EVENT_INDEX, ROOM_MEMBERS, USERS
from bridge.db.crm_user import CrmUser
from bridge.realtime import REALTIME
from tests.api_support import api_for, token
from tests.conftest import unique
from tests.helpers import eventually, matrix_user
from tests.realtime_support import Directory, MatrixWatcher, Recorder, conversation_of, settle


async def test_events_both_ways_with_element_and_privacy(stack) -> None:
    app, url = stack.app, stack.bridge_url
    directory = Directory(url, stack.config["admin_api.token"])
    eve_client = await matrix_user(stack.synapse, unique("eve"))
    eve_mxid = eve_client.user_id
    alice = await user_of(app, await directory.user("Alice RT"))
    bob = await user_of(app, await directory.user("Bob RT"))
    carol = await user_of(app, await directory.user("Carol Outsider"))
    # Eve uses Element with her own Matrix account, linked to her CRM user.
    eve_user = await user_of(app, await directory.user("Eve Element", matrix_id=eve_mxid))
    eve_id = eve_user.crm_user_id
    members = [alice.crm_user_id, bob.crm_user_id, eve_id]
    project = await directory.project(unique("p"), "Realtime project", members, alice.crm_user_id)
    cid = conversation_of(project)
    conv = await app[CONVERSATIONS].get(cid)
    await eventually(lambda: _invited(eve_client, conv.room_id))
    await eve_client.join(conv.room_id)
    await eventually(lambda: _joined(app, conv.room_id, eve_mxid))
    eve = await MatrixWatcher(eve_client).start()

    # Bob on long-polling, Carol (in no shared conversation) on a websocket.
    b = await Recorder("bob").connect(url, token(app, bob), transports=["polling"])
    c = await Recorder("carol").connect(url, token(app, carol))
    a = None
    try:
        # The first socket sets the puppet online; Bob hears it, Element sees it.
        a = await Recorder("alice").connect(url, token(app, alice), query=True)
        online = await b.wait("user_online", lambda d: d["id"] == alice.crm_user_id)
        assert online == {"id": alice.crm_user_id, "name": "Alice RT", "avatar": None}
        assert b.of("user_online", lambda d: d["id"] == alice.crm_user_id) == [online]

        async def alice_online_in_matrix() -> bool:
            resp = await eve_client.get_presence(alice.mxid)
            return isinstance(resp, PresenceGetResponse) and resp.presence == "online"

        await eventually(alice_online_in_matrix)

        # A message over REST: new_message to both sockets exactly once, and to Element.
        async with api_for(app, url, alice) as api:
            status, sent, _ = await api.post(
                "/api/chat/send", {"conversationId": cid, "content": "hello over REST"}
            )
        assert status == 201, sent
        got = await b.wait("new_message", lambda d: d["_id"] == sent["_id"])
        assert got["conversationId"] == cid and got["content"] == "hello over REST"
        assert got["sender"]["_id"] == alice.crm_user_id and "cursor" in got
        await a.wait("new_message", lambda d: d["_id"] == sent["_id"])
        update = await b.wait(
            "conversation_update",
            lambda d: d.get("id") == cid and d.get("lastMessage") == "hello over REST",
        )
        assert update["lastMessageTime"] == got["createdAt"]
        await eventually(lambda: _async("hello over REST" in eve.bodies(conv.room_id)))

        # A message over Socket.IO, with an ack and message_sent.
        ack = await b.call(
            "send_message", {"conversationId": cid, "content": "hello over socket", "type": "text"}
        )
        assert ack["content"] == "hello over socket" and ack["conversationId"] == cid
        sent_event = await b.wait("message_sent", lambda d: d["_id"] == ack["_id"])
        assert sent_event["sender"]["_id"] == bob.crm_user_id
        await a.wait("new_message", lambda d: d["_id"] == ack["_id"])
        await b.wait("new_message", lambda d: d["_id"] == ack["_id"])
        await eventually(lambda: _async("hello over socket" in eve.bodies(conv.room_id)))

        # A message from Element reaches both sockets.
        resp = await eve_client.room_send(
            conv.room_id, "m.room.message", {"msgtype": "m.text", "body": "hello from element"}
        )
        assert isinstance(resp, RoomSendResponse)
        for sock in (a, b):
            got = await sock.wait("new_message", lambda d: d["content"] == "hello from element")
            assert got["sender"]["_id"] == eve_id and got["eventId"] == resp.event_id
            # The cursor is the message's place in the conversation's log (an opaque token).
            assert got["cursor"].startswith("s.") and got["cursor"] != got["_id"]

        # Typing, socket -> Bob and Element; not back to Alice herself.
        await a.emit("typing", {"conversationId": cid, "isTyping": True})
        typing = await b.wait(
            "user_typing", lambda d: d["userId"] == alice.crm_user_id and d["isTyping"]
        )
        assert typing["conversationId"] == cid and typing["user"]["name"] == "Alice RT"
        await eventually(
            lambda: _async(
                alice.mxid in eve.typing[conv.room_id] or print(eve.errors[-3:], dict(eve.typing))
            )
        )
        await a.emit("typing", {"conversationId": cid, "isTyping": False})
        await b.wait(
            "user_typing", lambda d: d["userId"] == alice.crm_user_id and not d["isTyping"]
        )
        await eventually(lambda: _async(alice.mxid not in eve.typing[conv.room_id]))
        # Typing, Element -> both sockets.
        await eve_client.room_typing(conv.room_id, True, timeout=10000)
        for sock in (a, b):
            await sock.wait("user_typing", lambda d: d["userId"] == eve_id and d["isTyping"])
        await eve_client.room_typing(conv.room_id, False)
        await a.wait("user_typing", lambda d: d["userId"] == eve_id and not d["isTyping"])

        # Receipts, socket -> Alice (messages_read + message_update) and Element.
        await b.emit("mark_as_read", {"conversationId": cid, "messageIds": [sent["_id"]]})
        read = await a.wait("messages_read", lambda d: d["readBy"]["user"] == bob.crm_user_id)
        assert read["conversationId"] == cid and read["messageIds"] == [sent["_id"]]
        assert read["readBy"]["readAt"]
        updated = await a.wait("message_update", lambda d: d["_id"] == sent["_id"])
        assert bob.crm_user_id in {r["user"] for r in updated["readBy"]}
        await eventually(lambda: _async((conv.room_id, bob.mxid, sent["eventId"]) in eve.receipts))
        # Receipts, Element -> both sockets (everything up to the newest message).
        await eve_client.room_read_markers(conv.room_id, resp.event_id, resp.event_id)
        for sock in (a, b):
            read = await sock.wait("messages_read", lambda d: d["readBy"]["user"] == eve_id)
            assert set(read["messageIds"]) == {sent["_id"], ack["_id"]}

        # Presence, Element -> sockets.
        await eve_client.set_presence("online")
        await a.wait("user_online", lambda d: d["id"] == eve_id)
        await eve_client.set_presence("offline")
        await a.wait("user_offline", lambda d: d == eve_id)

        # Privacy: Carol saw nothing of this conversation or its people, and cannot join it.
        await settle(0.5)
        for event in ("new_message", "user_typing", "messages_read", "message_update"):
            assert carol_saw(c, event) == [], event
        assert [d for d in c.of("user_online") if d["id"] in (alice.crm_user_id, eve_id)] == []
        assert c.of("conversation_update") == []
        await c.emit("join_conversation", cid)
        error = await c.wait("error")
        assert error["message"] == "Conversation not found"
        assert c.of("joined_conversation") == []
        # A participant joining works with a bare id and with {conversationId}.
        await a.emit("join_conversation", cid)
        await a.wait("joined_conversation", lambda d: d == {"conversationId": cid})

        # The last socket closing, then the grace period: offline on both sides.
        closed_at = datetime.now(UTC)
        await a.close()
        await b.wait("user_offline", lambda d: d == alice.crm_user_id)

        async def alice_offline_in_matrix() -> bool:
            resp = await eve_client.get_presence(alice.mxid)
            return isinstance(resp, PresenceGetResponse) and resp.presence == "offline"

        await eventually(alice_offline_in_matrix)
        # The directory shows her offline, last seen when her socket closed.
        async with api_for(app, url, bob) as api:
            listed = (await api.get("/api/users"))[1]
        entry = next(u for u in listed if u["_id"] == alice.crm_user_id)
        assert entry["isOnline"] is False
        last_seen = datetime.fromisoformat(entry["lastSeen"].replace("Z", "+00:00"))
        assert abs((last_seen - closed_at).total_seconds()) < 5, (last_seen, closed_at)
        # Every message reached each socket exactly once.
        await app[REALTIME].drain()
        ids = [m["_id"] for m in b.of("new_message")]
        assert len(ids) == len(set(ids)) == 3
    finally:
        for sock in (a, b, c):
            if sock is not None:
                await sock.close()
        await eve.stop()
        await eve_client.close()


def carol_saw(c: Recorder, event: str) -> list:
    return c.of(event)


async def _async(value: object) -> object:
    return value


async def user_of(app, crm_user_id: str) -> CrmUser:
    user = await app[USERS].get(crm_user_id)
    assert user is not None
    return user


async def _invited(client, room_id: str) -> bool:
    resp = await client.sync(timeout=0, set_presence="offline")
    return room_id in getattr(getattr(resp, "rooms", None), "invite", {})


async def _joined(app, room_id: str, mxid: str) -> bool:
    return await app[ROOM_MEMBERS].get(room_id, mxid) == "join"


async def test_rename_and_new_member_send_conversation_update(stack) -> None:
    app, url = stack.app, stack.bridge_url
    directory = Directory(url, stack.config["admin_api.token"])
    alice = await user_of(app, await directory.user("Alice CU"))
    dave = await user_of(app, await directory.user("Dave Newcomer"))
    project_id = unique("p")
    project = await directory.project(
        project_id, "Before rename", [alice.crm_user_id], alice.crm_user_id
    )
    cid = conversation_of(project)
    a = await Recorder("alice").connect(url, token(app, alice))
    d = await Recorder("dave").connect(url, token(app, dave))
    try:
        # Rename: the CRM renames the project; the directory renames its room.
        await directory.project(project_id, "After rename", [alice.crm_user_id], alice.crm_user_id)
        renamed = await a.wait(
            "conversation_update", lambda x: x.get("id") == cid and x.get("name") == "After rename"
        )
        assert renamed["_id"] == cid and renamed["participants"]
        assert d.of("conversation_update") == []

        # Dave is added: his open socket joins the conversation and hears about it.
        members = [alice.crm_user_id, dave.crm_user_id]
        await directory.project(project_id, "After rename", members, alice.crm_user_id)
        added = await d.wait("conversation_update", lambda x: x.get("id") == cid)
        assert dave.crm_user_id in {p["_id"] for p in added["participants"]}
        await a.wait(
            "conversation_update",
            lambda x: (
                x.get("id") == cid
                and dave.crm_user_id in {p["_id"] for p in x.get("participants", [])}
            ),
        )
        async with api_for(app, url, alice) as api:
            status, sent, _ = await api.post(
                "/api/chat/send", {"conversationId": cid, "content": "welcome dave"}
            )
        assert status == 201
        got = await d.wait("new_message", lambda x: x["_id"] == sent["_id"])
        assert got["content"] == "welcome dave"

        # Dave is removed: his socket leaves the conversation and hears nothing more of it.
        await directory.project(project_id, "After rename", [alice.crm_user_id], alice.crm_user_id)
        await a.wait(
            "conversation_update",
            lambda x: (
                x.get("id") == cid
                and dave.crm_user_id not in {p["_id"] for p in x.get("participants", [])}
            ),
        )
        seen_by_dave = len(d.events)
        async with api_for(app, url, alice) as api:
            status, after, _ = await api.post(
                "/api/chat/send", {"conversationId": cid, "content": "dave has gone"}
            )
        assert status == 201
        await a.wait("new_message", lambda x: x["_id"] == after["_id"])

        # Archived: the power levels change, and the participants hear about it.
        updates = len(a.of("conversation_update"))
        await directory.archive(project_id)
        await eventually(lambda: _async(len(a.of("conversation_update")) > updates))
        await settle(0.5)
        assert [e for e, _ in d.events[seen_by_dave:]] == []
    finally:
        await a.close()
        await d.close()


async def test_bad_tokens_are_refused_at_connect(stack) -> None:
    app, url = stack.app, stack.bridge_url
    ghost = unique("ghost")
    for auth in ({"token": "not-a-jwt"}, {"token": token(app, ghost)}, None):
        client = socketio.AsyncClient(reconnection=False)
        refusals: list = []
        client.on("connect_error", lambda data, r=refusals: r.append(data))
        try:
            await client.connect(url, auth=auth, transports=["websocket"], wait_timeout=10)
        except socketio.exceptions.ConnectionError:
            pass
        else:
            await client.disconnect()
            raise AssertionError(f"connected with {auth!r}")
        assert len(refusals) == 1, refusals
        # A good token of a user the directory never synced: 403's code, not a logout (#19).
        assert refusals[0]["data"]["errcode"] in (
            "M_UNKNOWN_TOKEN",
            "M_MISSING_TOKEN",
            "M_USER_NOT_SYNCED",
        )
        assert refusals[0]["message"]


async def test_message_stamped_in_the_past_reaches_an_open_socket(stack) -> None:
    """``origin_ts`` is the sender's homeserver's clock (a federated guest's server sets it
    freely): a message stamped an hour early, indexed and announced after the socket
    connected, still reaches it. The first delivery starts at the seq the room had when the
    socket entered, never at a time."""
    app, url = stack.app, stack.bridge_url
    directory = Directory(url, stack.config["admin_api.token"])
    alice = await user_of(app, await directory.user("Alice Skew"))
    bob = await user_of(app, await directory.user("Bob Skew"))
    members = [alice.crm_user_id, bob.crm_user_id]
    project = await directory.project(unique("p"), "Clock skew", members, alice.crm_user_id)
    cid = conversation_of(project)
    conv = await app[CONVERSATIONS].get(cid)
    for user in (alice, bob):
        await eventually(lambda user=user: _joined(app, conv.room_id, user.mxid))
    a = await Recorder("alice").connect(url, token(app, alice))
    try:
        # Bob's puppet sends with a timestamp an hour back (the appservice `ts` parameter,
        # as a skewed homeserver would stamp it); it arrives in a real transaction.
        old_ts = int(datetime.now(UTC).timestamp() * 1000) - 3_600_000
        homeserver = str(stack.config["homeserver.address"]).rstrip("/")
        path = f"/_matrix/client/v3/rooms/{conv.room_id}/send/m.room.message/{unique('t')}"
        headers = {"Authorization": f"Bearer {stack.config['appservice.as_token']}"}
        body = {"msgtype": "m.text", "body": "stamped an hour early"}
        async with aiohttp.ClientSession() as session:
            params = {"user_id": bob.mxid, "ts": str(old_ts)}
            put = session.put(homeserver + path, json=body, params=params, headers=headers)
            async with put as r:
                assert r.status == 200, await r.text()
                event_id = (await r.json())["event_id"]
        row = await eventually(lambda: app[EVENT_INDEX].get(event_id))
        assert row.origin_ts == old_ts
        got = await a.wait("new_message", lambda m: m.get("content") == "stamped an hour early")
        assert got["conversationId"] == cid and got["cursor"]
    finally:
        await a.close()
