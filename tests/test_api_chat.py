"""The seed's chat routes end to end: real Synapse, PostgreSQL, Redis and Matrix clients."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from bridge.chat.service import CHAT
from bridge.context import EVENT_INDEX, MATRIX, RECEIPTS, USERS
from bridge.crm.drift import DRIFT
from tests.api_support import api_for, crm_user, media_path, png, project_chat
from tests.conftest import unique
from tests.fault_traffic import join_when_invited, matrix_send
from tests.helpers import eventually, matrix_user

pytestmark = pytest.mark.integration

MESSAGE_KEYS = {
    "_id", "conversation", "conversationId", "sender", "content", "type", "attachments",
    "readBy", "createdAt", "updatedAt", "matrixRoomId", "eventId",
}  # fmt: skip


def find(conversations: list[dict[str, Any]], conversation_id: str) -> dict[str, Any]:
    matches = [c for c in conversations if c["_id"] == conversation_id]
    assert matches, f"{conversation_id} not listed"
    return matches[0]


def contents(page: dict[str, Any]) -> list[str]:
    return [m["content"] for m in page["messages"]]


async def test_project_chat_send_page_and_read(stack) -> None:
    app = stack.app
    alice, bob = await asyncio.gather(crm_user(app, "Alice"), crm_user(app, "Bob"))
    conv = await project_chat(app, [alice, bob], name="Apollo")
    cid = conv.conversation_id
    async with (
        api_for(app, stack.bridge_url, alice) as a,
        api_for(app, stack.bridge_url, bob) as b,
    ):
        sent = []
        for i in range(5):
            status, message, headers = await a.post(
                "/api/chat/send", {"conversationId": cid, "content": f"m{i}"}
            )
            assert status == 201, message
            assert set(message) >= MESSAGE_KEYS
            assert message["sender"] == {
                "_id": alice.crm_user_id, "name": "Alice", "email": alice.email, "avatar": None,
                # The CRM messenger's fields (issue 19), beside the seed's four.
                "firstName": "Alice", "lastName": "", "profileImage": None, "position": None,
            }  # fmt: skip
            assert message["conversationId"] == cid and message["type"] == "text"
            assert message["readBy"][0]["user"] == alice.crm_user_id
            assert message["cursor"].startswith("s.")  # its place in the log
            assert headers["X-RateLimit-Limit"] == "30"
            sent.append(message)
        ids = [m["_id"] for m in sent]
        # Unread counts come from the index, which the homeserver's transactions feed.
        await eventually(lambda: app[EVENT_INDEX].get(sent[-1]["eventId"]))

        status, listing, _ = await b.get("/api/chat/conversations")
        assert status == 200 and isinstance(listing, list)
        mine = find(listing, cid)
        assert mine["type"] == "project" and mine["name"] == "Apollo"
        assert mine["project"]["name"] == "Apollo" and mine["project"]["emoji"] == "🚀"
        assert {p["_id"] for p in mine["participants"]} == {alice.crm_user_id, bob.crm_user_id}
        assert mine["lastMessage"]["content"] == "m4"
        assert mine["unreadCount"] == 5
        assert find((await a.get("/api/chat/conversations"))[1], cid)["unreadCount"] == 0
        assert cid in {c["_id"] for c in (await b.get("/api/chat/project"))[1]}
        assert cid not in {c["_id"] for c in (await b.get("/api/chat/direct"))[1]}

        # The seed's pages: newest first by page, oldest to newest inside a page.
        path = f"/api/chat/messages/{cid}"
        status, page1, _ = await b.get(path, params={"page": 1, "limit": 2})
        assert status == 200 and contents(page1) == ["m3", "m4"] and page1["hasMore"]
        page2 = (await b.get(path, params={"page": 2, "limit": 2}))[1]
        assert contents(page2) == ["m1", "m2"] and page2["hasMore"]
        page3 = (await b.get(path, params={"page": 3, "limit": 2}))[1]
        assert contents(page3) == ["m0"] and not page3["hasMore"]
        assert (await b.get(path))[1]["messages"][-1]["_id"] == ids[4]

        # Cursors both ways.
        back = (await b.get(path, params={"before": ids[3], "limit": 2}))[1]
        assert contents(back) == ["m1", "m2"] and back["hasMore"] and back["nextCursor"] == ids[1]
        back2 = (await b.get(path, params={"before": back["nextCursor"], "limit": 2}))[1]
        assert contents(back2) == ["m0"] and not back2["hasMore"] and back2["nextCursor"] is None
        forward = (await b.get(path, params={"after": ids[1], "limit": 2}))[1]
        assert contents(forward) == ["m2", "m3"] and forward["hasMore"]
        forward2 = (await b.get(path, params={"after": forward["nextCursor"], "limit": 2}))[1]
        assert contents(forward2) == ["m4"] and not forward2["hasMore"]

        # Read up to m2: readBy and unreadCount follow, and a Matrix receipt went out.
        status, body, _ = await b.post(
            "/api/chat/mark-read", {"conversationId": cid, "messageId": ids[2]}
        )
        assert status == 200 and body["message"] == "Messages marked as read"
        assert body["messageIds"] == ids[:3]
        assert find((await b.get("/api/chat/conversations"))[1], cid)["unreadCount"] == 2
        page = (await a.get(path, params={"limit": 5}))[1]
        readers = {m["content"]: {r["user"] for r in m["readBy"]} for m in page["messages"]}
        assert readers["m2"] == {alice.crm_user_id, bob.crm_user_id}
        assert readers["m3"] == {alice.crm_user_id}
        receipt = await app[MATRIX].hs.get(
            f"/_matrix/client/v3/user/{bob.mxid}/rooms/{conv.room_id}/account_data/m.fully_read",
            as_user=bob.mxid,
        )
        assert receipt["event_id"] == sent[2]["eventId"]

        # Without messageId: up to the latest.
        status, body, _ = await b.post("/api/chat/mark-read", {"conversationId": cid})
        assert status == 200 and body["messageIds"] == ids[3:]
        listed = find((await b.get("/api/chat/conversations"))[1], cid)
        assert listed["unreadCount"] == 0
        assert {r["user"] for r in listed["lastMessage"]["readBy"]} == {
            alice.crm_user_id, bob.crm_user_id
        }  # fmt: skip

        # The same receipt arriving from the homeserver later changes nothing.
        stored = await app[RECEIPTS].get(conv.room_id, bob.mxid)
        assert stored is not None and stored.event_id == sent[4]["eventId"]


async def test_send_is_idempotent_with_client_message_id(stack) -> None:
    app = stack.app
    alice, bob = await asyncio.gather(crm_user(app), crm_user(app))
    conv = await project_chat(app, [alice, bob])
    body = {"conversationId": conv.conversation_id, "content": "once", "clientMessageId": "c-1"}
    async with api_for(app, stack.bridge_url, alice) as a:
        first, second = await asyncio.gather(
            a.post("/api/chat/send", body), a.post("/api/chat/send", body)
        )
        third = await a.post("/api/chat/send", body)
        assert first[0] == second[0] == third[0] == 201
        assert first[1]["_id"] == second[1]["_id"] == third[1]["_id"]
        assert first[1]["content"] == third[1]["content"] == "once"
        page = (await a.get(f"/api/chat/messages/{conv.conversation_id}"))[1]
        assert contents(page) == ["once"]
        other = await project_chat(app, [alice])
        status, error, _ = await a.post(
            "/api/chat/send", {**body, "conversationId": other.conversation_id}
        )
        assert status == 409 and error["errcode"] == "M_CONFLICT"


async def test_direct_conversations(stack) -> None:
    app = stack.app
    alice, bob = await asyncio.gather(crm_user(app, "Alice D"), crm_user(app, "Bob D"))
    async with (
        api_for(app, stack.bridge_url, alice) as a,
        api_for(app, stack.bridge_url, bob) as b,
    ):
        status, created, _ = await a.post("/api/chat/direct/create", {"userId": bob.crm_user_id})
        assert status == 201, created
        assert created["type"] == "direct" and created["project"] is None
        assert {p["_id"] for p in created["participants"]} == {alice.crm_user_id, bob.crm_user_id}
        status, again, _ = await b.post(
            "/api/chat/direct/create", {"participantId": alice.crm_user_id}
        )
        assert status == 200 and again["_id"] == created["_id"]
        status, error, _ = await a.post("/api/chat/direct/create", {"userId": alice.crm_user_id})
        assert status == 400 and error["errcode"] == "M_INVALID_PARAM" and error["message"]
        status, error, _ = await a.post("/api/chat/direct/create", {"userId": unique("nobody")})
        assert status == 404

        # A real Matrix DM: is_direct on the invite and m.direct for both puppets.
        room_id = created["matrixRoomId"]
        direct = await app[MATRIX].get_account_data(bob.mxid, "m.direct")
        assert room_id in direct[alice.mxid]
        member = await app[MATRIX].get_state_event(room_id, "m.room.member", bob.mxid, bob.mxid)
        assert member["membership"] == "join"

        cid = created["_id"]
        status, message, _ = await b.post(
            "/api/chat/send", {"conversationId": cid, "content": "hi Alice", "type": "text"}
        )
        assert status == 201
        # At once, before the homeserver's transaction: the sender's listing shows it, and
        # the other side can mark it read by id (as after a Socket.IO new_message).
        mine = find((await b.get("/api/chat/direct"))[1], cid)
        assert mine["lastMessage"]["_id"] == message["_id"] and mine["unreadCount"] == 0
        status, body, _ = await a.post(
            "/api/chat/mark-read", {"conversationId": cid, "messageId": message["_id"]}
        )
        assert status == 200, body
        await eventually(lambda: app[EVENT_INDEX].get(message["eventId"]))
        status, message, _ = await b.post(
            "/api/chat/send", {"conversationId": cid, "content": "hi again", "type": "link"}
        )
        assert status == 201 and message["type"] == "link"
        await eventually(lambda: app[EVENT_INDEX].get(message["eventId"]))
        listing = (await a.get("/api/chat/direct"))[1]
        dm = find(listing, cid)
        assert dm["lastMessage"]["_id"] == message["_id"] and dm["unreadCount"] == 1
        assert cid not in {c["_id"] for c in (await a.get("/api/chat/project"))[1]}
        assert (await a.post("/api/chat/mark-read", {"conversationId": cid}))[0] == 200
        assert find((await a.get("/api/chat/direct"))[1], cid)["unreadCount"] == 0
        page = (await a.get(f"/api/chat/messages/{cid}", params={"page": 1, "limit": 50}))[1]
        assert contents(page) == ["hi Alice", "hi again"] and not page["hasMore"]
        assert [m["type"] for m in page["messages"]] == ["text", "link"]


async def test_outsiders_get_404_and_nothing_changes(stack) -> None:
    app = stack.app
    alice, bob, eve = await asyncio.gather(crm_user(app), crm_user(app), crm_user(app))
    conv = await project_chat(app, [alice, bob])
    cid = conv.conversation_id
    async with api_for(app, stack.bridge_url, eve) as e:
        for method, path, body in (
            ("GET", f"/api/chat/messages/{cid}", None),
            ("POST", "/api/chat/send", {"conversationId": cid, "content": "intrude"}),
            ("POST", "/api/chat/mark-read", {"conversationId": cid}),
            ("GET", "/api/chat/messages/doesNotExist", None),
            ("POST", "/api/chat/send", {"conversationId": "x!!", "content": "x"}),
        ):
            status, error, _ = await e.call(method, path, body)
            assert status == 404, (path, error)
            assert error == {"message": "Conversation not found", "errcode": "M_NOT_FOUND"}
        assert cid not in {c["_id"] for c in (await e.get("/api/chat/conversations"))[1]}
    assert await app[EVENT_INDEX].count(conv.room_id) == 0


@pytest.mark.parametrize(
    ("path", "body", "status", "errcode"),
    [
        ("/api/chat/send", b"not json", 400, "M_NOT_JSON"),
        ("/api/chat/send", b"[1, 2]", 400, "M_BAD_JSON"),
        ("/api/chat/send", b"", 400, "M_BAD_JSON"),
        ("/api/chat/send", {"content": "no conversation"}, 400, "M_INVALID_PARAM"),
        ("/api/chat/send", {"conversationId": "CID", "content": 5}, 400, "M_INVALID_PARAM"),
        ("/api/chat/send", {"conversationId": "CID", "content": "  "}, 400, "M_INVALID_PARAM"),
        ("/api/chat/send", {"conversationId": "CID", "content": "x", "type": "video"}, 400,
         "M_INVALID_PARAM"),
        ("/api/chat/send", {"conversationId": "CID", "content": "x", "attachments": "a"}, 400,
         "M_INVALID_PARAM"),
        ("/api/chat/send", {"conversationId": "CID", "content": "x",
                            "attachments": [{"url": "https://evil.example/x.png"}]}, 400,
         "M_INVALID_PARAM"),
        ("/api/chat/send", {"conversationId": "CID", "content": "x" * 20001}, 400,
         "M_INVALID_PARAM"),
        # Under 20,000 characters but over Synapse's event size once stored: refused by us.
        ("/api/chat/send", {"conversationId": "CID", "content": "я" * 15000}, 400,
         "M_INVALID_PARAM"),
        ("/api/chat/send", {"conversationId": "CID", "content": "x" * 2_000_000}, 413,
         "M_TOO_LARGE"),
        ("/api/chat/mark-read", {"conversationId": "CID", "messageId": 7}, 400,
         "M_INVALID_PARAM"),
        ("/api/chat/mark-read", {"conversationId": "CID", "messageId": "nope"}, 404,
         "M_NOT_FOUND"),
        ("/api/chat/direct/create", {}, 400, "M_INVALID_PARAM"),
        ("/api/chat/messages/CID?limit=0", None, 400, "M_INVALID_PARAM"),
        ("/api/chat/messages/CID?page=abc", None, 400, "M_INVALID_PARAM"),
        ("/api/chat/messages/CID?before=a&after=b", None, 400, "M_INVALID_PARAM"),
        ("/api/chat/messages/CID?before=nonexistent", None, 404, "M_NOT_FOUND"),
        ("/api/chat/messages/CID?after=nonexistent", None, 404, "M_NOT_FOUND"),
    ],
)  # fmt: skip
async def test_malformed_requests_change_nothing(stack, path, body, status, errcode) -> None:
    app = stack.app
    alice = await crm_user(app)
    conv = await project_chat(app, [alice])
    path = path.replace("CID", conv.conversation_id)
    if isinstance(body, dict):
        body = {k: (conv.conversation_id if v == "CID" else v) for k, v in body.items()}
    async with api_for(app, stack.bridge_url, alice) as a:
        if body is None:
            got, error, _ = await a.get(path)
        elif isinstance(body, bytes):
            got, error, _ = await a.post(
                path, data=body, headers={"Content-Type": "application/json"}
            )
        else:
            got, error, _ = await a.post(path, body)
        assert (got, error["errcode"]) == (status, errcode), error
        assert isinstance(error["message"], str) and error["message"]
    assert await app[EVENT_INDEX].count(conv.room_id) == 0
    assert await app[RECEIPTS].get(conv.room_id, alice.mxid) is None


async def test_messages_from_plain_matrix_clients(stack) -> None:
    """Element-like clients: a linked account speaks as its CRM user, others as themselves."""
    app = stack.app
    linked_local, stranger_local = unique("linked"), unique("stranger")
    linked_mxid = f"@{linked_local}:localhost"
    carol = await crm_user(app, "Carol", matrix_id=linked_mxid)
    alice = await crm_user(app, "Alice M")
    conv = await project_chat(app, [alice, carol])
    linked = await matrix_user(stack.synapse, linked_local)
    stranger = await matrix_user(stack.synapse, stranger_local)
    # Drift repair removes a Matrix user the CRM does not list (the stranger) 0.2 s after
    # their join, which raced their message under load: held off, so that there is a
    # stranger's message to show.
    drift_delay, app[DRIFT].delay = app[DRIFT].delay, 120.0
    try:
        await stranger.set_displayname("Stranger Danger")
        picture = png()
        uploaded, _ = await stranger.upload(
            lambda *_: picture, content_type="image/png", filesize=len(picture)
        )
        await stranger.set_avatar(uploaded.content_uri)
        for client in (linked, stranger):
            await app[MATRIX].invite(conv.room_id, client.user_id)
            # As Element does: join once the invite shows (with Synapse's workers the
            # worker answering the join may not have replicated the invite yet).
            await join_when_invited(client, conv.room_id)
        await matrix_send(linked, conv.room_id, "from element", unique("txn"))
        sent_stranger = await matrix_send(stranger, conv.room_id, "from a stranger", unique("txn"))
        await eventually(lambda: app[EVENT_INDEX].get(sent_stranger.event_id))
        async with api_for(app, stack.bridge_url, alice) as a:
            page = (await a.get(f"/api/chat/messages/{conv.conversation_id}"))[1]
            by_content = {m["content"]: m for m in page["messages"]}
            assert by_content["from element"]["sender"]["_id"] == carol.crm_user_id
            assert by_content["from element"]["sender"]["name"] == "Carol"
            stranger_sender = by_content["from a stranger"]["sender"]
            assert stranger_sender["_id"] == stranger.user_id
            assert stranger_sender["name"] == "Stranger Danger"
            # Its Matrix avatar is offered, and downloadable like a profile on Matrix.
            avatar = stranger_sender["avatar"]
            assert avatar.startswith(f"{stack.bridge_url}/api/chat/media/localhost/")
            async with aiohttp.ClientSession() as session:
                async with session.get(avatar) as resp:  # signed for Alice: no token needed
                    assert resp.status == 200 and await resp.read() == picture
                url = stack.bridge_url + media_path(avatar)
                async with session.get(url, headers=a.headers()) as resp:
                    assert resp.status == 200 and await resp.read() == picture
            listed = find((await a.get("/api/chat/conversations"))[1], conv.conversation_id)
            assert listed["lastMessage"]["content"] == "from a stranger"
            assert listed["lastMessage"]["sender"]["_id"] == stranger.user_id
            assert listed["unreadCount"] == 2

            # Element's read receipt reaches readBy, mapped to the linked CRM user.
            await linked.room_read_markers(
                conv.room_id, sent_stranger.event_id, sent_stranger.event_id
            )

            async def carol_read() -> bool:
                page = (await a.get(f"/api/chat/messages/{conv.conversation_id}"))[1]
                last = page["messages"][-1]
                return carol.crm_user_id in {r["user"] for r in last["readBy"]}

            await eventually(carol_read)
        async with api_for(app, stack.bridge_url, carol) as c:
            listed = find((await c.get("/api/chat/conversations"))[1], conv.conversation_id)
            assert listed["unreadCount"] == 0
    finally:
        app[DRIFT].delay = drift_delay
        await linked.close()
        await stranger.close()


async def test_unknown_and_deactivated_users(stack) -> None:
    app = stack.app
    dave = await crm_user(app)
    async with api_for(app, stack.bridge_url, unique("ghost")) as ghost:
        status, error, _ = await ghost.get("/api/chat/conversations")
        # A good token of a user the directory does not know: 403, never a logout (#19).
        assert status == 403 and error["errcode"] == "M_USER_NOT_SYNCED"
    dave.active = False
    await app[USERS].upsert(dave)
    async with api_for(app, stack.bridge_url, dave) as d:
        status, error, _ = await d.get("/api/chat/conversations")
        assert status == 403 and error["errcode"] == "M_USER_DEACTIVATED"
    assert app[CHAT] is not None
