"""The newer chat routes end to end: one conversation, unread total, online users, search,
clear-chat and upload-and-post, against the real Synapse, PostgreSQL, Redis and clients."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from nio import RoomMessagesResponse

from bridge.api.clear import CLEARED_TYPE
from bridge.chat.service import CHAT
from bridge.context import (
    CONVERSATIONS,
    DATABASE,
    EVENT_INDEX,
    HOMESERVER,
    IDS,
    MATRIX,
    ROOM_MEMBERS,
)
from bridge.matrix.homeserver import _FOR_USER
from tests.api_support import (
    api_for,
    crm_user,
    media_and_sends,
    media_path,
    png,
    project_chat,
    token,
    unsigned,
)
from tests.conftest import unique
from tests.helpers import eventually, matrix_user
from tests.realtime_support import Directory, Recorder, conversation_of
from tests.test_api_chat import MESSAGE_KEYS, contents, find

pytestmark = pytest.mark.integration

NOT_FOUND = {"message": "Conversation not found", "errcode": "M_NOT_FOUND"}
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 200


async def send(api, cid: str, text: str) -> dict[str, Any]:
    status, message, _ = await api.post("/api/chat/send", {"conversationId": cid, "content": text})
    assert status == 201, message
    return message


async def indexed(app, message: dict[str, Any]) -> None:
    """Indexed (at send) and brought back by its transaction: from then on every read shows
    the homeserver's timestamp, not the one the send path gave it before Synapse's echo."""
    event_id = message["eventId"]
    await eventually(lambda: app[EVENT_INDEX].get(event_id))
    sender = app[IDS].puppet_mxid(message["sender"]["_id"])
    stored = await app[MATRIX].get_event(message["matrixRoomId"], event_id, as_user=sender)

    async def echoed() -> bool:
        cached = app[CHAT].events.get(event_id) or {}
        return cached.get("origin_server_ts") == stored["origin_server_ts"]

    await eventually(echoed)


def upload_form(cid: str | None, name: str, data: bytes, content: str | None = None):
    form = aiohttp.FormData()
    if cid is not None:
        form.add_field("conversationId", cid)
    if content is not None:
        form.add_field("content", content)
    form.add_field("file", data, filename=name, content_type="application/octet-stream")
    return form


async def test_one_conversation_in_the_list_shape(stack) -> None:
    app = stack.app
    alice, bob, eve = await asyncio.gather(crm_user(app), crm_user(app), crm_user(app))
    conv = await project_chat(app, [alice, bob], name="Single")
    cid = conv.conversation_id
    async with (
        api_for(app, stack.bridge_url, alice) as a,
        api_for(app, stack.bridge_url, bob) as b,
        api_for(app, stack.bridge_url, eve) as e,
    ):
        await indexed(app, await send(a, cid, "hello"))
        status, one, _ = await b.get(f"/api/chat/conversations/conversation/{cid}")
        assert status == 200, one
        assert one == find((await b.get("/api/chat/conversations"))[1], cid)
        assert one["lastMessage"]["content"] == "hello" and one["unreadCount"] == 1
        for path in (
            f"/api/chat/conversations/conversation/{cid}",
            "/api/chat/conversations/conversation/doesNotExist",
        ):
            status, error, _ = await e.get(path)
            assert (status, error) == (404, NOT_FOUND), path


async def test_unread_count_is_the_sum_of_the_list(stack) -> None:
    app = stack.app
    alice, bob, carol = await asyncio.gather(crm_user(app), crm_user(app), crm_user(app))
    first = await project_chat(app, [alice, bob])
    second = await project_chat(app, [alice, bob, carol])
    async with (
        api_for(app, stack.bridge_url, alice) as a,
        api_for(app, stack.bridge_url, bob) as b,
        api_for(app, stack.bridge_url, carol) as c,
    ):
        status, body, _ = await b.get("/api/chat/unread-count")
        assert (status, body) == (200, {"count": 0})
        for i in range(3):
            await send(a, first.conversation_id, f"a{i}")
        await send(c, second.conversation_id, "c0")
        last = await send(a, second.conversation_id, "a3")
        own = await send(b, second.conversation_id, "mine")
        await indexed(app, last)
        await indexed(app, own)
        status, direct, _ = await a.post("/api/chat/direct/create", {"userId": bob.crm_user_id})
        await indexed(app, await send(a, direct["_id"], "dm"))

        # Homeserver requests made for a user (the facade's handlers), seen on their way out.
        homeserver = app[HOMESERVER]
        request, for_users = homeserver.request, []

        async def spy(method: str, path: str, **kw: Any) -> Any:
            if _FOR_USER.get():
                for_users.append(path)
            return await request(method, path, **kw)

        homeserver.request = spy  # type: ignore[method-assign]
        try:
            status, body, _ = await b.get("/api/chat/unread-count")
        finally:
            del homeserver.request
        assert for_users == []  # from the index alone
        listing = (await b.get("/api/chat/conversations"))[1]
        assert status == 200 and body["count"] == sum(x["unreadCount"] for x in listing) == 6

        await b.post("/api/chat/mark-read", {"conversationId": first.conversation_id})
        listing = (await b.get("/api/chat/conversations"))[1]
        body = (await b.get("/api/chat/unread-count"))[1]
        assert body["count"] == sum(x["unreadCount"] for x in listing) == 3
        assert (await c.get("/api/chat/unread-count"))[1] == {"count": 2}


async def test_online_users_are_participants_online_now(stack) -> None:
    app, url = stack.app, stack.bridge_url
    alice, bob, carol, dave = await asyncio.gather(
        crm_user(app, "Alice On"), crm_user(app, "Bob On"), crm_user(app, "Carol Off"),
        crm_user(app, "Dave Elsewhere"),
    )  # fmt: skip
    await project_chat(app, [alice, bob, carol])
    await project_chat(app, [dave])
    element = await matrix_user(stack.synapse, unique("elon"))
    sockets = [Recorder("bob"), Recorder("dave")]
    try:
        conv = await project_chat(app, [alice])
        await app[MATRIX].invite(conv.room_id, element.user_id)
        await element.join(conv.room_id)
        await app[ROOM_MEMBERS].set(conv.room_id, element.user_id, "join")
        await element.set_displayname("Elon Element")
        await element.sync(timeout=0, set_presence="online")
        # Bob and Dave open sockets (which sets their puppets online); Carol does not.
        await sockets[0].connect(url, token(app, bob))
        await sockets[1].connect(url, token(app, dave))
        async with api_for(app, url, alice) as a:

            async def online() -> set[str] | None:
                status, people, _ = await a.get("/api/chat/online-users")
                assert status == 200, people
                ids = {p["_id"] for p in people}
                return ids if {bob.crm_user_id, element.user_id} <= ids else None

            ids = await eventually(online)
            assert carol.crm_user_id not in ids and dave.crm_user_id not in ids
            assert alice.crm_user_id not in ids
            people = {p["_id"]: p for p in (await a.get("/api/chat/online-users"))[1]}
            assert set(people[bob.crm_user_id]) == {"_id", "name", "avatar", "lastSeen"}
            assert people[bob.crm_user_id]["name"] == "Bob On"
            assert people[bob.crm_user_id]["lastSeen"].endswith("Z")
            assert people[element.user_id]["name"] == "Elon Element"
    finally:
        for socket in sockets:
            await socket.close()
        await element.close()


async def test_search_as_the_puppet(stack) -> None:
    app = stack.app
    directory = Directory(stack.bridge_url, stack.config["admin_api.token"])
    alice_id, bob_id, eve_id = [await directory.user(n) for n in ("Sa", "Sb", "Se")]
    project_id = unique("p")
    project = await directory.project(project_id, "Search", [alice_id, bob_id], alice_id)
    cid = conversation_of(project)
    other = conversation_of(await directory.project(unique("p"), "Other", [alice_id], alice_id))
    word = unique("zebra")
    async with (
        api_for(app, stack.bridge_url, alice_id) as a,
        api_for(app, stack.bridge_url, bob_id) as b,
        api_for(app, stack.bridge_url, eve_id) as e,
    ):
        sent = [await send(a, cid, f"{word} number {i}") for i in range(5)]
        await send(a, cid, "nothing to see")
        await send(a, other, f"{word} elsewhere")
        await indexed(app, sent[-1])

        async def found(api, **params) -> dict[str, Any]:
            status, page, _ = await api.get("/api/chat/search", params={"q": word, **params})
            assert status == 200, page
            return page

        # Synapse indexes for search as it persists: no wait beyond the send.
        page = await found(b)
        assert contents(page) == [f"{word} number {i}" for i in reversed(range(5))]
        assert all(set(m) >= MESSAGE_KEYS for m in page["messages"])
        assert page["messages"][0]["sender"]["_id"] == alice_id
        assert page["messages"][0] == {
            **page["messages"][0], "conversationId": cid, "_id": sent[-1]["_id"]
        }  # fmt: skip
        assert len((await found(a))["messages"]) == 6
        assert contents(await found(a, conversationId=other)) == [f"{word} elsewhere"]

        # Pages follow Synapse's next_batch.
        seen: list[str] = []
        cursor = None
        for _ in range(5):
            page = await found(b, limit=2, **({"cursor": cursor} if cursor else {}))
            seen += contents(page)
            cursor = page["nextCursor"]
            if not cursor:
                break
        assert seen == [f"{word} number {i}" for i in reversed(range(5))]

        # Outsiders: the same 404 as for a conversation that does not exist; no results.
        for target in (cid, "doesNotExist"):
            status, error, _ = await e.get(
                "/api/chat/search", params={"q": word, "conversationId": target}
            )
            assert (status, error) == (404, NOT_FOUND)
        assert (await found(e))["messages"] == []

        # Bob removed from the project: he loses the conversation's messages in search.
        await directory.project(project_id, "Search", [alice_id], alice_id)

        async def bob_left() -> bool:
            status, _, _ = await b.get(
                "/api/chat/search", params={"q": word, "conversationId": cid}
            )
            return status == 404

        await eventually(bob_left)
        assert (await found(b))["messages"] == []
        room_id = (await app[CONVERSATIONS].get(cid)).room_id
        assert await app[ROOM_MEMBERS].get(room_id, app[IDS].puppet_mxid(bob_id)) != "join"

        # Bad input.
        for params, errcode in (
            ({}, "M_INVALID_PARAM"),
            ({"q": ""}, "M_INVALID_PARAM"),
            ({"q": "   "}, "M_INVALID_PARAM"),
            ({"q": "x" * 257}, "M_INVALID_PARAM"),
            ({"q": word, "limit": "0"}, "M_INVALID_PARAM"),
            ({"q": word, "limit": "many"}, "M_INVALID_PARAM"),
            ({"q": word, "cursor": "not-a-cursor"}, "M_INVALID_PARAM"),
        ):
            status, error, _ = await a.get("/api/chat/search", params=params)
            assert (status, error["errcode"]) == (400, errcode), (params, error)
            assert error["message"]


async def test_clear_chat_hides_history_for_one_user_only(stack) -> None:
    app, url = stack.app, stack.bridge_url
    alice, bob, eve = await asyncio.gather(crm_user(app), crm_user(app), crm_user(app))
    conv = await project_chat(app, [alice, bob])
    cid, path = conv.conversation_id, f"/api/chat/messages/{conv.conversation_id}"
    element = await matrix_user(stack.synapse, unique("elc"))
    try:
        await app[MATRIX].invite(conv.room_id, element.user_id)
        await element.join(conv.room_id)
        async with (
            api_for(app, url, alice) as a,
            api_for(app, url, bob) as b,
            api_for(app, url, eve) as e,
        ):
            old = [await send(a, cid, f"old {i}") for i in range(3)]
            await indexed(app, old[-1])
            assert (await b.get("/api/chat/unread-count"))[1]["count"] == 3

            status, cleared, _ = await b.post("/api/chat/clear-chat", {"conversationId": cid})
            assert status == 200, cleared
            assert cleared["conversationId"] == cid and cleared["messageId"] == old[-1]["_id"]
            # The record is Bob's room account data in Matrix.
            data = await app[MATRIX].get_room_account_data(bob.mxid, conv.room_id, CLEARED_TYPE)
            assert data["event_id"] == old[-1]["eventId"]
            assert data["ts"] == (await app[EVENT_INDEX].get(old[-1]["eventId"])).origin_ts

            # For Bob: no history, no lastMessage, no unread.
            assert (await b.get(path))[1] == {"messages": [], "hasMore": False, "nextCursor": None}
            listed = find((await b.get("/api/chat/conversations"))[1], cid)
            assert listed["lastMessage"] is None and listed["unreadCount"] == 0
            assert (await b.get("/api/chat/unread-count"))[1]["count"] == 0
            assert (await b.get("/api/chat/search", params={"q": "old"}))[1]["messages"] == []

            # Alice and Element still see everything.
            assert contents((await a.get(path))[1]) == ["old 0", "old 1", "old 2"]
            assert find((await a.get("/api/chat/conversations"))[1], cid)["lastMessage"]
            resp = await element.room_messages(conv.room_id, start="", limit=20)
            assert isinstance(resp, RoomMessagesResponse)
            bodies = [getattr(ev, "body", None) for ev in resp.chunk]
            assert {"old 0", "old 1", "old 2"} <= set(bodies)

            # What comes after the point is Bob's again, by page and by cursor.
            new = [await send(a, cid, f"new {i}") for i in range(2)]
            await indexed(app, new[-1])
            assert contents((await b.get(path))[1]) == ["new 0", "new 1"]
            back = (await b.get(path, params={"before": new[1]["_id"]}))[1]
            assert contents(back) == ["new 0"] and not back["hasMore"]
            listed = find((await b.get("/api/chat/conversations"))[1], cid)
            assert listed["lastMessage"]["content"] == "new 1" and listed["unreadCount"] == 2
            assert (await b.get("/api/chat/unread-count"))[1]["count"] == 2
            assert contents((await a.get(path))[1])[:3] == ["old 0", "old 1", "old 2"]

            # The record is Matrix's: a fresh process (no checked pairs) follows account
            # data changed elsewhere, here emptied to undo the clear.
            await app[MATRIX].set_room_account_data(bob.mxid, conv.room_id, CLEARED_TYPE, {})
            app[CHAT].clear_checked.clear()
            assert len((await b.get(path))[1]["messages"]) == 5
            assert await app[CHAT].cleared.get(conv.room_id, bob.mxid) is None

            # Outsiders and bad input.
            for body in ({"conversationId": cid}, {"conversationId": "doesNotExist"}):
                status, error, _ = await e.post("/api/chat/clear-chat", body)
                assert (status, error) == (404, NOT_FOUND)
            for body in ({}, {"conversationId": 5}, {"conversationId": ""}):
                status, error, _ = await b.post("/api/chat/clear-chat", body)
                assert (status, error["errcode"]) == (400, "M_INVALID_PARAM"), body
                assert error["message"]
            rows = await app[DATABASE].fetch(
                "SELECT mxid FROM cleared_history WHERE room_id=$1", conv.room_id
            )
            assert rows == []
    finally:
        await element.close()


async def test_upload_and_post_in_one_call(stack) -> None:
    app, url = stack.app, stack.bridge_url
    alice, bob, eve = await asyncio.gather(crm_user(app), crm_user(app), crm_user(app))
    conv = await project_chat(app, [alice, bob])
    cid = conv.conversation_id
    element = await matrix_user(stack.synapse, unique("elu"))
    socket = Recorder("bob")
    try:
        await app[MATRIX].invite(conv.room_id, element.user_id)
        await element.join(conv.room_id)
        await socket.connect(url, token(app, bob))
        await socket.emit("join_conversation", cid)
        await socket.wait("joined_conversation", lambda d: d == {"conversationId": cid})
        image = png(3, 3)
        async with (
            api_for(app, url, alice) as a,
            api_for(app, url, bob) as b,
            api_for(app, url, eve) as e,
        ):
            status, message, headers = await a.post(
                "/api/chat/upload/chat", data=upload_form(cid, "../cat <1>.png", image, "a cat")
            )
            assert status == 201, message
            assert set(message) >= MESSAGE_KEYS and message["cursor"].startswith("s.")
            assert message["type"] == "image" and message["content"] == "a cat"
            attachment = message["attachments"][0]
            assert attachment["mimetype"] == "image/png" and attachment["size"] == len(image)
            assert attachment["originalName"] == "cat _1_.png"
            assert headers["X-RateLimit-Limit"] == "30"  # send's limit
            pushed = await socket.wait("new_message", lambda m: m["_id"] == message["_id"])
            assert unsigned(pushed["attachments"]) == unsigned([attachment])
            assert "sig=" in pushed["attachments"][0]["url"]

            status, doc, _ = await a.post(
                "/api/chat/upload/chat", data=upload_form(cid, "s.pdf", PDF)
            )
            assert status == 201 and doc["type"] == "file" and doc["content"] == ""

            # Element sees m.image / m.file with the mxc url, and can download the bytes.
            # Polled: once, in a make test-min run, /messages right after the 201 did not
            # list the second upload yet; Element would see it on its next sync.
            async def both() -> dict[str, Any] | None:
                resp = await element.room_messages(conv.room_id, start="", limit=10)
                assert isinstance(resp, RoomMessagesResponse)
                by_id = {ev.event_id: ev.source["content"] for ev in resp.chunk}
                return by_id if {message["eventId"], doc["eventId"]} <= set(by_id) else None

            by_id = await eventually(both, timeout=10)
            img = by_id[message["eventId"]]
            assert img["msgtype"] == "m.image" and img["url"].startswith("mxc://localhost/")
            assert img["info"] == {"mimetype": "image/png", "size": len(image)}
            assert by_id[doc["eventId"]]["msgtype"] == "m.file"
            assert by_id[doc["eventId"]]["url"].startswith("mxc://localhost/")
            downloaded = await element.download(mxc=img["url"])
            assert downloaded.body == image
            async with (
                aiohttp.ClientSession() as session,
                session.get(url + media_path(attachment["url"]), headers=b.headers()) as got,
            ):
                assert got.status == 200 and await got.read() == image

            # Outsiders: 404 like a missing conversation, and nothing reaches Matrix.
            # Counted by kind: other writes (presence, receipts) may land meanwhile.
            uploads = media_and_sends(app)
            for target in (cid, "doesNotExist"):
                status, error, _ = await e.post(
                    "/api/chat/upload/chat", data=upload_form(target, "x.png", image)
                )
                assert (status, error) == (404, NOT_FOUND)
            # Bad input: 4xx with a reason, nothing uploaded.
            for form, want in (
                (upload_form(None, "x.png", image), (400, "M_INVALID_PARAM")),
                (upload_form(cid, "x.exe", EXE), (415, "M_UNSUPPORTED_TYPE")),
                (upload_form(cid, "x.png", b""), (400, "M_INVALID_PARAM")),
                (upload_form(cid, "x.png", image, "x" * 20001), (400, "M_INVALID_PARAM")),
                (aiohttp.FormData({"conversationId": cid}, default_to_multipart=True),
                 (400, "M_INVALID_PARAM")),
            ):  # fmt: skip
                status, error, _ = await a.post("/api/chat/upload/chat", data=form)
                assert (status, error["errcode"]) == want, error
                assert error["message"]
            status, error, _ = await a.post("/api/chat/upload/chat", {"conversationId": cid})
            assert status == 415
            assert media_and_sends(app) == uploads
    finally:
        await socket.close()
        await element.close()
