"""Who may pin and delete (issue 19), with matrix-nio as Element, for new rooms and for
rooms made before the change; pins made through two facade processes at once; and auth
that answers 403, never 401, for a good token whose user the chat does not know."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import socketio
from nio import RoomPutStateError, RoomPutStateResponse

from bridge.api import dm_levels
from bridge.api.auth import USER_TTL
from bridge.api.dm_levels import LEVELS_VERSION
from bridge.context import (
    CONVERSATIONS,
    EVENT_INDEX,
    MATRIX,
    PROJECTS,
    RECEIVER,
    ROOM_MEMBERS,
    USERS,
)
from bridge.crm.rooms import PINNED_EVENTS, normalize_power_levels
from bridge.db.conversation import DIRECT, direct_key
from bridge.ids import conversation_id_for_room
from bridge.matrix.homeserver import MatrixError
from bridge.matrix.receiver import Role
from tests.api_support import api_for, crm_user, token
from tests.conftest import unique
from tests.crm_page import CrmPage
from tests.helpers import eventually, matrix_user
from tests.realtime_support import BridgeProcess, Directory, facade_config
from tests.relations_support import accept_invite, person, users

pytestmark = pytest.mark.integration


def ok(status: int, body: Any, want: int = 200) -> Any:
    assert status == want, body
    return body


async def _no_client_acts_as(homeserver: str, mxid: str) -> None:
    """Neither a password login nor a registration gets a Matrix client a session as the
    puppet ``mxid``."""
    localpart = mxid[1:].split(":", 1)[0]
    attempts = (
        ("/_matrix/client/v3/login", {"type": "m.login.password", "password": "guess",
         "identifier": {"type": "m.id.user", "user": mxid}}),
        ("/_matrix/client/v3/register", {"username": localpart, "password": "guess-4-long!",
         "auth": {"type": "m.login.dummy"}}),
    )  # fmt: skip
    async with aiohttp.ClientSession() as session:
        for path, body in attempts:
            async with session.post(homeserver + path, json=body) as resp:
                answer = await resp.json()
            assert resp.status in (400, 403) and "access_token" not in answer, (path, answer)


async def test_members_pin_in_old_and_new_project_rooms(stack) -> None:
    app, url = stack.app, stack.bridge_url
    directory = Directory(url, stack.config["admin_api.token"])
    element = await matrix_user(stack.synapse, unique("el"))
    ada_id = await person(directory, "Ada Admin", "admin")
    emp_id = await person(directory, "Emp Loyee", "employee", matrix_id=element.user_id)
    project_id = unique("p")
    project = await directory.project(project_id, "Pins", [ada_id, emp_id], ada_id)
    room_id = project["roomId"]
    cid = conversation_id_for_room(room_id)
    await accept_invite(element, room_id)
    (ada,) = await users(app, ada_id)
    try:
        async with api_for(app, url, ada) as a:
            sent = ok(
                *(await a.post("/api/chat/send", {"conversationId": cid, "content": "x"}))[:2], 201
            )
            await eventually(lambda: app[EVENT_INDEX].get(sent["eventId"]))
        # A new room: the employee (Element) pins, and the pin is the room's state.
        resp = await element.room_put_state(room_id, PINNED_EVENTS, {"pinned": [sent["eventId"]]})
        assert isinstance(resp, RoomPutStateResponse), resp
        state = await app[MATRIX].get_state_event(room_id, PINNED_EVENTS)
        assert state["pinned"] == [sent["eventId"]]

        # The same room as the bridge made it before: pins at the state default (100).
        levels = await app[MATRIX].get_state_event(room_id, "m.room.power_levels")
        old = {
            **levels,
            "events": {k: v for k, v in levels["events"].items() if k != PINNED_EVENTS},
        }
        await app[MATRIX].send_state(room_id, "m.room.power_levels", old)
        row = await app[PROJECTS].get(project_id)
        assert row is not None
        row.applied = {**row.applied, "power_levels": normalize_power_levels(old)}
        await app[PROJECTS].upsert(row)
        resp = await element.room_put_state(room_id, PINNED_EVENTS, {"pinned": []})
        assert isinstance(resp, RoomPutStateError), "the old levels let an employee pin"

        # The next reconcile migrates it: the employee pins again.
        result = await directory.project(project_id, "Pins", [ada_id, emp_id], ada_id)
        assert result["roomId"] == room_id
        levels = await app[MATRIX].get_state_event(room_id, "m.room.power_levels")
        assert levels["events"][PINNED_EVENTS] == 0
        resp = await element.room_put_state(room_id, PINNED_EVENTS, {"pinned": []})
        assert isinstance(resp, RoomPutStateResponse), resp
        assert (await app[MATRIX].get_state_event(room_id, PINNED_EVENTS))["pinned"] == []
    finally:
        await element.close()


async def test_dm_partners_cannot_delete_each_others_messages(stack) -> None:
    app, url = stack.app, stack.bridge_url
    alice, bob = await asyncio.gather(crm_user(app, "Alice Dm"), crm_user(app, "Bob Dm"))
    # A DM made the old way: trusted_private_chat, both at level 100.
    room_id = await app[MATRIX].create_room(
        {"preset": "trusted_private_chat", "is_direct": True, "invite": [bob.mxid]},
        as_user=alice.mxid,
    )
    await app[MATRIX].join(room_id, as_user=bob.mxid)
    await app[CONVERSATIONS].add(
        room_id, DIRECT, key=direct_key(alice.crm_user_id, bob.crm_user_id)
    )
    await app[ROOM_MEMBERS].set_many(room_id, {alice.mxid: "join", bob.mxid: "join"})
    # In room version 12 Synapse makes the invitee an additional creator (implicit, unlimited
    # power that no power levels can lower): only the facade can refuse there.
    create = await app[MATRIX].get_state_event(room_id, "m.room.create", as_user=alice.mxid)
    old_creators = {*create.get("additional_creators", [])}
    cid = conversation_id_for_room(room_id)

    async with api_for(app, url, alice) as a, api_for(app, url, bob) as b:
        from_alice = ok(
            *(await a.post("/api/chat/send", {"conversationId": cid, "content": "a"}))[:2], 201
        )
        from_bob = ok(
            *(await b.post("/api/chat/send", {"conversationId": cid, "content": "b"}))[:2], 201
        )
        for m in (from_alice, from_bob):
            await eventually(lambda m=m: app[EVENT_INDEX].get(m["eventId"]))
        # Existing DMs are fixed by the receiver's duty (the stack's process holds the lock;
        # a standby never runs it, a takeover does): run here as the duty runs it.
        assert app[RECEIVER].role is Role.RECEIVER
        await asyncio.wait_for(dm_levels.run(app), 60)
        assert room_id not in await app[CONVERSATIONS].directs_below(LEVELS_VERSION)
        levels = await app[MATRIX].get_state_event(
            room_id, "m.room.power_levels", as_user=alice.mxid
        )
        if bob.mxid not in old_creators:
            assert levels["users"].get(bob.mxid, 0) < levels.get("redact", 50)
        if bob.mxid not in old_creators:  # an older room version: the levels were lowered
            with pytest.raises(MatrixError) as refused:
                await app[MATRIX].redact(room_id, from_alice["eventId"], as_user=bob.mxid)
            assert refused.value.status == 403
        # Through the facade, neither way (the creator's power is implicit in room v12).
        for api, other in ((b, from_alice), (a, from_bob)):
            status, body, _ = await api.post(
                "/api/chat/delete-message", {"messageId": other["_id"]}
            )
            assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
        # The facade is the only door to a DM partner: both members are puppets, which no
        # Matrix client but the bridge can act as (the appservice's namespace is exclusive
        # and a puppet has no password), so a creator's implicit power is the bridge's alone.
        await _no_client_acts_as(stack.config["homeserver.address"], bob.mxid)
        # Own messages, and pins, for both.
        ok(*(await b.post("/api/chat/pin-message", {"messageId": from_alice["_id"]}))[:2])
        ok(*(await b.post("/api/chat/delete-message", {"messageId": from_bob["_id"]}))[:2])

        # A DM made now: the invitee has no power over the creator's messages.
        carol = await crm_user(app, "Carol Dm")
        made = ok(
            *(await a.post("/api/chat/direct/create", {"userId": carol.crm_user_id}))[:2], 201
        )
        new_room = made["matrixRoomId"]
        levels = await app[MATRIX].get_state_event(
            new_room, "m.room.power_levels", as_user=alice.mxid
        )
        assert levels["users"].get(carol.mxid, 0) == 0 and levels["events"][PINNED_EVENTS] == 0
        assert await app[CONVERSATIONS].directs_below(LEVELS_VERSION) == [] or new_room not in (
            await app[CONVERSATIONS].directs_below(LEVELS_VERSION)
        )
        sent = ok(
            *(await a.post("/api/chat/send", {"conversationId": made["_id"], "content": "c"}))[:2],
            201,
        )
        await eventually(lambda: app[EVENT_INDEX].get(sent["eventId"]))
        with pytest.raises(MatrixError) as refused:
            await app[MATRIX].redact(new_room, sent["eventId"], as_user=carol.mxid)
        assert refused.value.status == 403
        async with api_for(app, url, carol) as c:
            ok(*(await c.post("/api/chat/pin-message", {"messageId": sent["_id"]}))[:2])


async def test_pins_through_two_facade_processes_all_survive(stack, tmp_path: Path) -> None:
    app, url = stack.app, stack.bridge_url
    directory = Directory(url, stack.config["admin_api.token"])
    ids = [await person(directory, f"Pinner {i}", "employee") for i in range(4)]
    project = await directory.project(unique("p"), "Race", ids, ids[0])
    cid = conversation_id_for_room(project["roomId"])
    people = await users(app, *ids)
    other = BridgeProcess(facade_config(stack.config), tmp_path, "facade-pins")
    await other.start()
    try:
        async with api_for(app, url, people[0]) as a:
            sent = []
            for i in range(8):
                body = {"conversationId": cid, "content": f"m{i}"}
                sent.append(ok(*(await a.post("/api/chat/send", body))[:2], 201))
            for m in sent:
                await eventually(lambda m=m: app[EVENT_INDEX].get(m["eventId"]))

        async def pin(i: int, m: dict[str, Any]) -> None:
            base = url if i % 2 else other.url
            async with api_for(app, base, people[i % len(people)]) as api:
                ok(*(await api.post("/api/chat/pin-message", {"messageId": m["_id"]}))[:2])

        await asyncio.gather(*(pin(i, m) for i, m in enumerate(sent)))
        state = await app[MATRIX].get_state_event(project["roomId"], PINNED_EVENTS)
        assert sorted(state["pinned"]) == sorted(m["eventId"] for m in sent)
    finally:
        other.stop()


async def test_a_socket_acts_as_its_user_is_now(stack) -> None:
    """Each socket operation reads its user as REST does (a second's cache), not the copy
    made at connect: an account deactivated in the database after the socket connected is
    refused there as on REST. (The directory's own deactivation also closes the sockets,
    realtime/access.py; here only the row changes.)"""
    app, url = stack.app, stack.bridge_url
    directory = Directory(url, stack.config["admin_api.token"])
    someone = await person(directory, "Soon Inactive", "employee")
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(url, auth={"token": token(app, someone)}, wait_timeout=10)
    try:
        typing = {"conversationId": "c-unknown", "isTyping": True}
        answer = await client.call("typing", typing, timeout=10)
        assert answer["errcode"] == "M_NOT_FOUND", answer  # the user acts; no such room
        await app[USERS].db.execute(
            "UPDATE crm_user SET active=false WHERE crm_user_id=$1", someone
        )
        await asyncio.sleep(USER_TTL + 0.2)
        for event, data in (("typing", typing), ("send_message", {"conversationId": "c"})):
            answer = await client.call(event, data, timeout=10)
            assert answer["errcode"] == "M_USER_DEACTIVATED", (event, answer)
    finally:
        await client.disconnect()


async def test_good_token_of_unknown_or_deactivated_user_is_403_everywhere(stack) -> None:
    app, url = stack.app, stack.bridge_url
    directory = Directory(url, stack.config["admin_api.token"])
    gone_id = await person(directory, "Gone Soon", "employee")
    await directory._put(
        f"/users/{gone_id}",
        {
            "name": "Gone Soon",
            "email": f"{gone_id}@example.com",
            "role": "employee",
            "active": False,
        },
    )
    cases = {unique("nobody"): "M_USER_NOT_SYNCED", gone_id: "M_USER_DEACTIVATED"}
    routes = sorted(
        {
            (route.method, route.resource.canonical)
            for route in app.router.routes()
            if route.resource is not None
            and route.resource.canonical.startswith("/api/")
            and not route.resource.canonical.startswith(
                ("/api/admin/", "/api/openapi", "/api/docs")
            )
            and route.method in ("GET", "POST")
        }
    )
    assert len(routes) >= 30, routes
    for crm_user_id, errcode in cases.items():
        async with api_for(app, url, crm_user_id) as api:
            for method, path in routes:
                concrete = path.replace("{conversationId}", "c").replace("{projectId}", "p")
                concrete = concrete.replace("{server}", "s").replace("{mediaId}", "m")
                status, body, _ = await api.call(method, concrete, {} if method == "POST" else None)
                assert status == 403 and body["errcode"] == errcode, (crm_user_id, path, body)
        # The socket: python-socketio and the npm client alike.
        client = socketio.AsyncClient(reconnection=False)
        errors: list[Any] = []
        client.on("connect_error", errors.append)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(url, auth={"token": token(app, crm_user_id)}, wait_timeout=10)
        assert errors and errors[0]["data"]["errcode"] == errcode, errors
        page = await CrmPage(url, token(app, crm_user_id)).start()
        try:
            line = page.lines[-1]
            assert line["event"] == "connect_error", page.lines
            assert line["data"]["data"]["errcode"] == errcode
        finally:
            await page.close()
    # 401 stays for bad tokens: forged, expired.
    async with api_for(app, url, None) as api:
        forged = jwt.encode({"sub": gone_id, "exp": 9999999999}, "wrong-secret", "HS256")
        expired = jwt.encode({"sub": gone_id, "exp": 1}, stack.config["auth.secret"], "HS256")
        for bad in (forged, expired, "not-a-jwt"):
            status, body, _ = await api.get(
                "/api/chat/employees", headers={"Authorization": f"Bearer {bad}"}
            )
            assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN", body
