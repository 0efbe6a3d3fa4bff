"""The CRM's own messenger (../shared/contracts/crm-messenger.md), row by row: what the page
sends, and every field it reads, through REST and the npm socket.io-client; matrix-nio as
Element. Real Synapse, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from nio import RoomPutStateResponse

from bridge.context import EVENT_INDEX, MATRIX
from bridge.ids import conversation_id_for_room
from tests.api_support import api_for, token
from tests.conftest import unique
from tests.crm_page import CrmPage
from tests.helpers import eventually, matrix_user
from tests.realtime_support import Directory, Recorder
from tests.relations_support import accept_invite, users

pytestmark = pytest.mark.integration

USER_KEYS = {"_id", "name", "firstName", "lastName", "email", "avatar", "profileImage", "position"}


async def put_user(directory: Directory, crm_user_id: str, **fields: Any) -> dict[str, Any]:
    body = {"email": f"{crm_user_id}@example.com", "role": "employee", **fields}
    return (await directory._put(f"/users/{crm_user_id}", body))["user"]


def ok(status: int, body: Any, want: int = 200) -> Any:
    assert status == want, body
    return body


async def test_crm_messenger_contract(stack) -> None:
    app, url = stack.app, stack.bridge_url
    directory = Directory(url, stack.config["admin_api.token"])
    acme, other_co = unique("acme"), unique("other")
    element = await matrix_user(stack.synapse, unique("el"))
    alice_id, bob_id, carol_id, dan_id = (unique(n) for n in ("alice", "bob", "carol", "dan"))
    # People: parts only (name derived), name only (parts split), another company, and an
    # employee whose own Matrix account is Element.
    alice = await put_user(
        directory, alice_id, firstName="Alice", lastName="Smith", position="Designer",
        profileImage="https://crm.example/pics/alice.png", companyId=acme, role="admin",
    )  # fmt: skip
    assert alice["name"] == "Alice Smith" and alice["companyId"] == acme
    bob = await put_user(directory, bob_id, name="Bob the Builder", companyId=acme)
    assert (bob["firstName"], bob["lastName"]) == ("Bob", "the Builder")
    await put_user(directory, carol_id, name="Carol Else", companyId=other_co)
    await put_user(directory, dan_id, name="Dan Element", companyId=acme, matrixId=element.user_id)
    a_user, b_user = await users(app, alice_id, bob_id)
    profile = await app[MATRIX].get_profile(a_user.mxid)
    assert profile["displayname"] == "Alice Smith"  # bridge.displayname_template "{name}"

    project = await directory.project(unique("p"), "Apollo", [alice_id, bob_id, dan_id], alice_id)
    room_id, cid = project["roomId"], conversation_id_for_room(project["roomId"])
    await accept_invite(element, room_id)
    page = await CrmPage(url, token(app, b_user)).start()
    a_sock = await Recorder("alice").connect(url, token(app, a_user))
    try:
        assert "connected" in {line["event"] for line in page.lines}, page.lines
        async with api_for(app, url, a_user) as a, api_for(app, url, b_user) as b:
            # ensure-project-chats: 2xx, the caller's project conversations counted.
            ensured = ok(*(await b.post("/api/chat/ensure-project-chats"))[:2])
            assert ensured["success"] is True and ensured["conversations"] == 1

            # Socket rooms of the CRM: own user room and own company only.
            assert await page.call("join_room", f"user_{bob_id}") == {"room": f"user_{bob_id}"}
            assert (await page.call("join_room", f"company_{acme}"))["room"] == f"company_{acme}"
            for refused in (f"company_{other_co}", f"user_{alice_id}", "everyone", 5):
                answer = await page.call("join_room", refused)
                assert answer["message"] and answer["errcode"] in ("M_FORBIDDEN", "M_INVALID_PARAM")
            error = await page.event("error")
            assert error["message"]

            # The CRM backend's own events through the bridge's sockets.
            admin = {"Authorization": f"Bearer {stack.config['admin_api.token']}"}
            async with aiohttp.ClientSession(headers=admin) as session:

                async def push(body: Any) -> tuple[int, Any]:
                    async with session.post(f"{url}/api/admin/v1/events", json=body) as resp:
                        return resp.status, await resp.json()

                note = {"title": "Task due", "id": 7}
                ok(*await push({"companyId": acme, "event": "new_notification", "data": note}))
                assert await page.event("new_notification") == note
                ok(*await push({"room": f"user_{bob_id}", "event": "new_lead", "data": {"x": 1}}))
                assert await page.event("new_lead") == {"x": 1}
                ok(*await push({"userId": bob_id, "event": "points_awarded", "data": {"p": 5}}))
                assert await page.event("points_awarded") == {"p": 5}
                status, body = await push({"userId": bob_id, "event": "new_message", "data": {}})
                assert status == 400 and body["errcode"] == "M_INVALID_PARAM"
                status, body = await push({"event": "new_lead", "data": {}})
                assert status == 400, body
                big = {"userId": bob_id, "event": "new_lead", "data": "x" * 70000}
                status, body = await push(big)
                assert status == 413 and body["errcode"] == "M_TOO_LARGE", body
                async with session.post(
                    f"{url}/api/admin/v1/events", json=note, headers={"Authorization": "Bearer no"}
                ) as resp:
                    assert resp.status == 401
                # Left: the company's events stop; the user's own room stays.
                await page.call("leave_room", f"company_{acme}")
                ok(*await push({"companyId": acme, "event": "task_status_changed", "data": 1}))
                ok(*await push({"userId": bob_id, "event": "task_status_changed", "data": 2}))
                assert await page.event("task_status_changed") == 2
                assert page.of("task_status_changed") == [2]

            # The list: participants with names, picture and presence.
            listed = ok(*(await b.get("/api/chat/conversations"))[:2])
            conv = next(c for c in listed if c["_id"] == cid)
            assert conv["type"] == "project" and conv["name"] == "Apollo"
            assert set(conv["project"]) >= {"_id", "name", "emoji", "color"}
            assert "lastActivity" in conv and conv["unreadCount"] == 0
            people = {p["_id"]: p for p in conv["participants"]}
            assert set(people) == {alice_id, bob_id, dan_id}
            for p in people.values():
                assert set(p) >= USER_KEYS | {"isOnline", "lastSeen"}
            assert people[alice_id]["firstName"] == "Alice"
            assert people[alice_id]["lastName"] == "Smith"
            assert people[alice_id]["profileImage"] == "https://crm.example/pics/alice.png"
            assert people[alice_id]["position"] == "Designer"
            assert people[bob_id]["isOnline"] is True  # the page's socket is open
            assert people[alice_id]["isOnline"] is True

            # Employees: the caller's company, active, minus the caller.
            staff = ok(*(await b.get("/api/chat/employees"))[:2])
            assert isinstance(staff, list)
            ids = {e["_id"] for e in staff}
            assert {alice_id, dan_id} <= ids and bob_id not in ids and carol_id not in ids
            first = next(e for e in staff if e["_id"] == alice_id)
            assert set(first) >= {"_id", "firstName", "lastName", "position", "profileImage",
                                  "isOnline"} | USER_KEYS  # fmt: skip
            assert (first["firstName"], first["position"], first["isOnline"]) == (
                "Alice", "Designer", True,
            )  # fmt: skip
            found = ok(*(await b.get("/api/chat/employees", params={"q": "design"}))[:2])
            assert [e["_id"] for e in found] == [alice_id]
            assert len(ok(*(await b.get("/api/chat/employees", params={"limit": "1"}))[:2])) == 1
            status, body, _ = await b.get("/api/chat/employees", params={"limit": "0"})
            assert status == 400 and body["errcode"] == "M_INVALID_PARAM"

            # direct/create: the seed's top level, and data for the CRM messenger.
            status, made, _ = await b.post("/api/chat/direct/create", {"userId": alice_id})
            assert status == 201 and made["success"] is True
            assert made["data"]["_id"] == made["_id"] and made["data"]["type"] == "direct"
            assert {p["_id"] for p in made["data"]["participants"]} == {alice_id, bob_id}
            other = next(p for p in made["data"]["participants"] if p["_id"] == alice_id)
            assert other["firstName"] == "Alice" and other["profileImage"]
            status, again, _ = await b.post("/api/chat/direct/create", {"userId": alice_id})
            assert status == 200 and again["data"]["_id"] == made["_id"]

            # project-groups.
            groups = ok(*(await b.get("/api/chat/project-groups"))[:2])
            assert groups["success"] is True
            assert [c["_id"] for c in groups["conversations"]] == [cid]

            # join_conversation, send, new_message with the sender's names.
            joined = await page.call("join_conversation", cid)
            assert joined == {"conversationId": cid}
            sent = ok(
                *(await a.post("/api/chat/send", {"conversationId": cid, "content": "hi"}))[:2], 201
            )
            got = await page.event("new_message", lambda m: m["_id"] == sent["_id"])
            assert got["conversationId"] == cid and got["content"] == "hi" and got["createdAt"]
            assert got["sender"]["_id"] == alice_id
            assert (got["sender"]["firstName"], got["sender"]["lastName"]) == ("Alice", "Smith")
            assert got["sender"]["profileImage"] == "https://crm.example/pics/alice.png"
            history = ok(*(await b.get(f"/api/chat/messages/{cid}?page=1&limit=50"))[:2])
            assert history["messages"][-1]["sender"]["firstName"] == "Alice"
            assert "hasMore" in history

            # typing → user_typing with the typer's names.
            await a_sock.emit("typing", {"conversationId": cid, "isTyping": True})
            typing = await page.event("user_typing", lambda t: t["isTyping"])
            assert typing["conversationId"] == cid and typing["userId"] == alice_id
            assert {"name", "avatar", "firstName", "lastName"} <= set(typing["user"])
            assert typing["user"]["firstName"] == "Alice"
            await a_sock.emit("typing", {"conversationId": cid, "isTyping": False})

            # Unread count, mark_as_read → messages_read, and REST mark-read.
            assert ok(*(await b.get("/api/chat/unread-count"))[:2])["count"] >= 1
            read = await page.call(
                "mark_as_read", {"conversationId": cid, "messageIds": [sent["_id"]]}
            )
            assert read["conversationId"] == cid
            seen = await a_sock.wait("messages_read", lambda r: r["conversationId"] == cid)
            assert sent["_id"] in seen["messageIds"] and seen["readBy"]
            ok(*(await b.post("/api/chat/mark-read", {"conversationId": cid}))[:2])
            assert ok(*(await b.get("/api/chat/unread-count"))[:2])["count"] == 0

            # Pins: a plain employee pins through the socket twin; both events name who.
            await eventually(lambda: app[EVENT_INDEX].get(sent["eventId"]))
            pinned = await page.call(
                "pin_message", {"messageId": sent["_id"], "conversationId": cid}
            )
            assert pinned["success"] is True and pinned["data"]["pinnedBy"]["_id"] == bob_id
            event = await page.event("message_pinned", lambda e: e["messageId"] == sent["_id"])
            assert event["conversationId"] == cid and event["pinnedAt"]
            assert event["pinnedBy"]["_id"] == bob_id and event["pinnedBy"]["firstName"] == "Bob"
            banner = ok(*(await b.get(f"/api/chat/pinned-messages/{cid}"))[:2])
            assert banner["success"] is True
            top = banner["data"][0]
            assert top["_id"] == sent["_id"] and top["content"] == "hi" and top["createdAt"]
            assert top["sender"]["firstName"] == "Alice" and top["sender"]["profileImage"]
            # REST unpin, then a pin from Element (the employee's own account).
            unpinned = ok(
                *(
                    await b.post(
                        "/api/chat/unpin-message", {"messageId": sent["_id"], "conversationId": cid}
                    )
                )[:2]
            )
            assert unpinned["data"]["unpinnedBy"]["_id"] == bob_id
            gone = await page.event("message_unpinned", lambda e: e["messageId"] == sent["_id"])
            assert gone["conversationId"] == cid and gone["unpinnedBy"]["lastName"] == "the Builder"
            resp = await element.room_put_state(
                room_id, "m.room.pinned_events", {"pinned": [sent["eventId"]]}
            )
            assert isinstance(resp, RoomPutStateResponse), resp
            from_element = await page.event(
                "message_pinned", lambda e: e["pinnedBy"]["_id"] == dan_id
            )
            assert from_element["messageId"] == sent["_id"]
            assert from_element["pinnedBy"]["firstName"] == "Dan"
            await page.event("message_update", lambda m: m["_id"] == sent["_id"] and m["isPinned"])

            # delete_message through the socket twin → message_deleted.
            mine = ok(
                *(await b.post("/api/chat/send", {"conversationId": cid, "content": "oops"}))[:2],
                201,
            )
            await eventually(lambda: app[EVENT_INDEX].get(mine["eventId"]))
            deleted = await page.call(
                "delete_message", {"messageId": mine["_id"], "conversationId": cid}
            )
            assert deleted["messageId"] == mine["_id"]
            gone = await page.event("message_deleted", lambda e: e["messageId"] == mine["_id"])
            assert gone["conversationId"] == cid
            refused = await page.call(
                "delete_message", {"messageId": sent["_id"], "conversationId": cid}
            )
            assert refused["errcode"] == "M_FORBIDDEN"  # an employee, another's message

            # clear-chat → chat_cleared to the caller's own sockets only.
            ok(*(await b.post("/api/chat/clear-chat", {"conversationId": cid}))[:2])
            cleared = await page.event("chat_cleared")
            assert cleared == {"conversationId": cid, "clearedBy": bob_id}
            assert not a_sock.of("chat_cleared")

            # The CRM UI's admin tools: membership is the directory's.
            for caller, want in ((b, 403), (a, 409)):
                for path, body in (
                    ("/api/chat/conversations/sync-projects", None),
                    (f"/api/chat/conversations/sync-project/{project['id']}", None),
                    (
                        "/api/chat/conversations/add-member",
                        {"projectId": project["id"], "userId": carol_id},
                    ),
                ):
                    status, answer, _ = await caller.post(path, body)
                    assert status == want, (path, answer)
                    assert answer["message"]
                    if want == 409:
                        assert "CRM directory" in answer["message"]
            listed = ok(*(await a.get("/api/chat/conversations"))[:2])
            members = next(c for c in listed if c["_id"] == cid)["participants"]
            assert carol_id not in {p["_id"] for p in members}

            # error {message}: an unknown conversation.
            answer = await page.call("join_conversation", "nope")
            assert answer["message"]
            assert (await page.event("error", lambda e: e is not answer))["message"]
    finally:
        await page.close()
        await a_sock.close()
        await element.close()


async def test_ensure_project_chats_repairs_only_what_the_directory_decided(stack) -> None:
    from bridge.context import PROJECTS, ROOM_MEMBERS
    from tests.api_support import crm_user, project_chat

    app, url = stack.app, stack.bridge_url
    alice, bob, eve = await asyncio.gather(
        crm_user(app, "Alice Ens"), crm_user(app, "Bob Ens"), crm_user(app, "Eve Ens")
    )
    conv = await project_chat(app, [alice], name="Ensured")
    # The directory has Bob in the project, but his join was lost (an outage, say).
    project = await app[PROJECTS].get(conv.project_id or "")
    assert project is not None
    project.members = [alice.crm_user_id, bob.crm_user_id]
    await app[PROJECTS].upsert(project)
    async with api_for(app, url, bob) as b, api_for(app, url, eve) as e:
        before = ok(*(await b.get("/api/chat/conversations"))[:2])
        assert conv.conversation_id not in {c["_id"] for c in before}
        ensured = ok(*(await b.post("/api/chat/ensure-project-chats"))[:2])
        assert ensured == {"success": True, "conversations": 1, "repaired": 1}
        assert await app[ROOM_MEMBERS].get(conv.room_id, bob.mxid) == "join"
        after = ok(*(await b.get("/api/chat/conversations"))[:2])
        assert conv.conversation_id in {c["_id"] for c in after}
        again = ok(*(await b.post("/api/chat/ensure-project-chats"))[:2])
        assert again == {"success": True, "conversations": 1, "repaired": 0}
        # Nobody is joined to a project the directory did not give them.
        assert ok(*(await e.post("/api/chat/ensure-project-chats"))[:2])["conversations"] == 0
        assert await app[ROOM_MEMBERS].get(conv.room_id, eve.mxid) is None


async def test_admin_tools_pull_the_directory_where_pull_mode_is_configured(stack) -> None:
    """sync-projects / sync-project / add-member: a CRM admin or manager starts a pull of the
    CRM (here a CRM that answers a snapshot nobody could apply, so nothing changes)."""
    from aiohttp import web

    from bridge.devstack.synapse import free_port
    from tests.api_support import crm_user, second_facade

    app = stack.app
    asked: list[str] = []

    async def snapshot(request: web.Request) -> web.Response:
        asked.append(request.headers.get("Authorization", ""))
        return web.json_response({"users": "not a list", "projects": []})

    crm = web.Application()
    crm.router.add_get("/snapshot", snapshot)
    runner = web.AppRunner(crm)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    manager = await crm_user(app, "Mia Manager")
    manager.role = "manager"
    from bridge.context import USERS

    await app[USERS].upsert(manager)
    overrides = {"sync.pull_url": f"http://127.0.0.1:{port}/snapshot", "sync.pull_token": "k3y"}
    try:
        async with second_facade(stack.config, **overrides) as facade:
            base = facade.config["appservice.address"]
            async with api_for(app, base, manager) as m:
                for path, body in (
                    ("/api/chat/conversations/sync-projects", None),
                    ("/api/chat/conversations/sync-project/p1", None),
                    ("/api/chat/conversations/add-member", {"projectId": "p1", "userId": "u2"}),
                ):
                    status, answer, _ = await m.post(path, body)
                    assert status == 202 and answer["success"] is True, answer
                    await eventually(lambda: _true(len(asked) >= 1))
                status, answer, _ = await m.post(
                    "/api/chat/conversations/add-member", {"projectId": 1}
                )
                assert status == 400 and answer["errcode"] == "M_INVALID_PARAM", answer
        assert asked and all(a == "Bearer k3y" for a in asked)
    finally:
        await runner.cleanup()


async def _true(value: bool) -> bool:
    return value


async def test_a_user_moved_to_another_company_leaves_the_old_company_room(stack) -> None:
    """The directory moves Bob to another company while his socket is in the old company's
    room: it leaves that room at once (his socket hears the old company's events no more)
    and may not join it again; the new company's room it may join."""
    app, url = stack.app, stack.bridge_url
    directory = Directory(url, stack.config["admin_api.token"])
    acme, other_co = unique("acme"), unique("other")
    bob_id = unique("bob")
    await put_user(directory, bob_id, name="Bob Mover", companyId=acme)
    (bob,) = await users(app, bob_id)
    sock = await Recorder("bob").connect(url, token(app, bob))
    admin = {"Authorization": f"Bearer {stack.config['admin_api.token']}"}
    try:
        async with aiohttp.ClientSession(headers=admin) as session:

            async def push(body: Any) -> None:
                async with session.post(f"{url}/api/admin/v1/events", json=body) as resp:
                    assert resp.status == 200, await resp.text()

            assert await sock.call("join_room", f"company_{acme}") == {"room": f"company_{acme}"}
            await push({"companyId": acme, "event": "new_notification", "data": 1})
            await sock.wait("new_notification", lambda d: d == 1)

            moved = await put_user(directory, bob_id, name="Bob Mover", companyId=other_co)
            assert moved["companyId"] == other_co
            await push({"companyId": acme, "event": "new_notification", "data": 2})
            await push({"userId": bob_id, "event": "new_lead", "data": "after"})
            await sock.wait("new_lead", lambda d: d == "after")
            assert sock.of("new_notification") == [1]

            # The socket's connect-time view is not trusted: the old room is refused now.
            refused = await sock.call("join_room", f"company_{acme}")
            assert refused["errcode"] == "M_FORBIDDEN", refused
            joined = await sock.call("join_room", f"company_{other_co}")
            assert joined == {"room": f"company_{other_co}"}
            await push({"companyId": other_co, "event": "new_notification", "data": 3})
            await sock.wait("new_notification", lambda d: d == 3)
    finally:
        await sock.close()
