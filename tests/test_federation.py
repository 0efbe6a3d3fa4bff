"""Guests from other homeservers in project chats, with three Synapses federating on loopback.

The bridge runs on ``ours``; ``partner`` is allowed (``federation.allowed_servers``), and
``outsider`` is not. Guests are matrix-nio clients on their own servers, as Element would
be; CRM users are python-socketio and npm socket.io-client sockets plus REST.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nio import AsyncClient, JoinError, JoinResponse, RoomSendResponse

from bridge.context import ROOM_MEMBERS, USERS
from tests.api_support import api_for, png, token
from tests.conftest import unique
from tests.federation_support import Federation, federation
from tests.helpers import eventually, matrix_user
from tests.node_support import NodeRecorder
from tests.realtime_support import Recorder, conversation_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Federation]:
    async with federation(Path(tmp_path_factory.mktemp("federation"))) as stack:
        yield stack


class Crm:
    """The CRM backend: pushes users and projects through the admin API."""

    def __init__(self, fed: Federation) -> None:
        self.base = fed.bridge_url + "/api/admin/v1"
        self.headers = {"Authorization": f"Bearer {fed.config['admin_api.token']}"}

    async def put(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.put(self.base + path, json=body, headers=self.headers) as resp,
        ):
            return resp.status, await resp.json()

    async def user(self, name: str, role: str = "employee", matrix_id: str | None = None) -> str:
        crm_user_id = unique("u")
        body: dict[str, Any] = {"name": name, "email": f"{crm_user_id}@example.com", "role": role}
        if matrix_id:
            body["matrixId"] = matrix_id
        status, data = await self.put(f"/users/{crm_user_id}", body)
        assert status == 200, data
        return crm_user_id

    async def project(
        self, project_id: str, members: list[str], guests: list[str] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": f"Project {project_id}", "members": members}
        if guests is not None:
            body["guests"] = guests
        status, data = await self.put(f"/projects/{project_id}", body)
        assert status == 200, data
        return data


async def invited_rooms(client: AsyncClient) -> set[str]:
    resp = await client.sync(timeout=0)
    return set(getattr(resp, "rooms", None).invite) if hasattr(resp, "rooms") else set()


async def accept_invite(client: AsyncClient, room_id: str, timeout: float = 30) -> None:
    """Wait for the invite to cross over, then join as Element would."""

    async def invited() -> bool:
        return room_id in await invited_rooms(client)

    await eventually(invited, timeout=timeout, interval=0.3)
    resp = await client.join(room_id)
    assert isinstance(resp, JoinResponse), resp


async def has_event(client: AsyncClient, room_id: str, event_id: str) -> None:
    """Wait until the client's own server holds the event (it came over federation)."""

    async def there() -> bool:
        resp = await client.room_get_event(room_id, event_id)
        return hasattr(resp, "event")

    await eventually(there, timeout=30, interval=0.2)


async def membership(fed: Federation, room_id: str, mxid: str) -> str:
    event = await fed.app[ROOM_MEMBERS].of_rooms([room_id])
    return event.get(room_id, {}).get(mxid, "leave")


async def state_event(
    fed: Federation, room_id: str, kind: str, key: str = "", as_user: str | None = None
) -> dict:
    async with aiohttp.ClientSession() as session:
        url = f"{fed.ours.url}/_matrix/client/v3/rooms/{room_id}/state/{kind}/{key}"
        headers = {"Authorization": f"Bearer {fed.config['appservice.as_token']}"}
        params = {"user_id": as_user} if as_user else {}
        async with session.get(url, headers=headers, params=params) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


async def test_project_with_guests_is_validated(fed: Federation) -> None:
    crm = Crm(fed)
    alice = await crm.user("Alice Own")
    domain = fed.config["homeserver.domain"]
    for guests, needle in (
        ([f"@someone:{domain}"], "is on this homeserver"),
        (["not-an-mxid"], "not a Matrix user id"),
        ("@a:b.example", "must be a list"),
    ):
        status, data = await crm.put(
            f"/projects/{unique('p')}", {"name": "P", "members": [alice], "guests": guests}
        )
        assert status == 400 and data["errcode"] == "M_INVALID_PARAM", data
        assert any(needle in p for p in data["problems"]), data


async def test_listed_guest_joins_and_talks_with_the_crm(fed: Federation) -> None:
    crm, app, url = Crm(fed), fed.app, fed.bridge_url
    guest = await matrix_user(fed.partner, unique("g"))
    alice_id = await crm.user("Alice Crm")
    project_id = unique("p")
    result = await crm.project(project_id, [alice_id], guests=[guest.user_id])
    room_id = result["project"]["roomId"]
    cid = conversation_of(result["project"])
    assert {"project": project_id, "mxid": guest.user_id} in result["plan"]["invite"]
    acl = await state_event(fed, room_id, "m.room.server_acl")
    domain = fed.config["homeserver.domain"]
    assert acl["allow"] == sorted(["localhost", domain, "127.0.0.1"]) and acl["allow_ip_literals"]
    power = await state_event(fed, room_id, "m.room.power_levels")
    assert power["users"][guest.user_id] < 0 <= power["events_default"] + 1

    alice = await app[USERS].get(alice_id)
    assert alice is not None
    socket = await Recorder("alice").connect(url, token(app, alice))
    node = await NodeRecorder().start(url, token(app, alice))
    try:
        await accept_invite(guest, room_id)
        await eventually(lambda: _is(membership(fed, room_id, guest.user_id), "join"))

        sent = await guest.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "hello from a partner"}
        )
        assert isinstance(sent, RoomSendResponse), sent
        for recorder in (socket, node):
            message = await recorder.wait(
                "new_message", lambda m: m.get("eventId") == sent.event_id, timeout=30
            )
            assert message["conversationId"] == cid
            assert message["content"] == "hello from a partner"
            sender = message["sender"]
            assert sender["_id"] == guest.user_id and sender["isGuest"] is True
            assert sender["homeserver"] == fed.partner.server_name

        # A picture, stored in the guest's own media repository (a remote mxc:// for us).
        picture = png(3, 3)
        upload, _ = await guest.upload(
            lambda *_: picture, content_type="image/png", filename="p.png", filesize=len(picture)
        )
        image = await guest.room_send(
            room_id,
            "m.room.message",
            {"msgtype": "m.image", "body": "p.png", "url": upload.content_uri,
             "info": {"mimetype": "image/png", "size": len(picture)}},
        )  # fmt: skip
        assert isinstance(image, RoomSendResponse), image
        for recorder in (socket, node):
            shown = await recorder.wait("new_message", lambda m: m.get("eventId") == image.event_id)
            assert shown["type"] == "image" and shown["attachments"][0]["mimetype"] == "image/png"
        async with api_for(app, url, alice) as api:
            status, page, _ = await api.get(f"/api/chat/messages/{cid}")
            assert status == 200
            by_event = {m["eventId"]: m for m in page["messages"]}
            assert by_event[sent.event_id]["sender"]["isGuest"] is True
            attachment = by_event[image.event_id]["attachments"][0]
            # The bridge fetches the guest's file through our homeserver, over federation.
            async with api.session.get(
                attachment["url"]
                if attachment["url"].startswith("http")
                else url + attachment["url"],
                headers=api.headers(),
            ) as resp:
                assert resp.status == 200 and await resp.read() == picture
            status, conversations, _ = await api.get("/api/chat/conversations")
            mine = next(c for c in conversations if c["_id"] == cid)
            guests = [p for p in mine["participants"] if p["_id"] == guest.user_id]
            assert guests and guests[0]["isGuest"] is True and "isOnline" in guests[0]
            assert guests[0]["firstName"] and guests[0]["lastName"] == ""
            status, employees, _ = await api.get("/api/chat/employees")
            assert status == 200 and not [e for e in employees if e["_id"].startswith("@")]
            status, reply, _ = await api.post(
                "/api/chat/send", {"conversationId": cid, "content": "welcome, partner"}
            )
            assert status == 201, reply

        # The CRM user's reply reaches the guest's server; the guest reacts to it, and types.
        await has_event(guest, room_id, reply["eventId"])
        reaction = await guest.room_send(
            room_id,
            "m.reaction",
            {
                "m.relates_to": {
                    "rel_type": "m.annotation",
                    "event_id": reply["eventId"],
                    "key": "👍",
                }
            },
        )
        assert isinstance(reaction, RoomSendResponse), reaction
        for recorder in (socket, node):
            await recorder.wait(
                "message_update",
                lambda m: (
                    m.get("_id") == reply["_id"]
                    and any(guest.user_id in r["users"] for r in m.get("reactions", []))
                ),
            )
        await guest.room_typing(room_id, True, timeout=10000)
        typing = await socket.wait(
            "user_typing", lambda t: t["userId"] == guest.user_id and t["isTyping"]
        )
        assert typing["user"]["isGuest"] is True

    finally:
        await socket.close()
        await node.close()
        await guest.close()


async def _is(value: Any, expected: Any) -> bool:
    return (await value) == expected


async def test_delisted_guest_is_removed_and_refused(fed: Federation) -> None:
    crm = Crm(fed)
    guest = await matrix_user(fed.partner, unique("g"))
    alice_id = await crm.user("Alice Delist")
    project_id = unique("p")
    result = await crm.project(project_id, [alice_id], guests=[guest.user_id])
    room_id = result["project"]["roomId"]
    try:
        await accept_invite(guest, room_id)
        await eventually(lambda: _is(membership(fed, room_id, guest.user_id), "join"))
        result = await crm.project(project_id, [alice_id], guests=[])
        assert {"project": project_id, "mxid": guest.user_id} in result["applied"]["kick"]
        members = await state_event(fed, room_id, "m.room.member", guest.user_id)
        assert members["membership"] == "leave"
        power = await state_event(fed, room_id, "m.room.power_levels")
        assert guest.user_id not in power["users"]

        async def refused() -> bool:
            resp = await guest.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": "still here?"}
            )
            return not isinstance(resp, RoomSendResponse)

        await eventually(refused, timeout=20, interval=0.5)
    finally:
        await guest.close()


async def test_server_outside_the_allow_list_cannot_join(fed: Federation) -> None:
    crm = Crm(fed)
    element = await matrix_user(fed.ours, unique("boss"))
    outsider = await matrix_user(fed.outsider, unique("x"))
    admin_id = await crm.user("Admin Element", role="admin", matrix_id=element.user_id)
    result = await crm.project(unique("p"), [admin_id])
    room_id = result["project"]["roomId"]
    try:
        await accept_invite(element, room_id)
        acl = await state_event(fed, room_id, "m.room.server_acl")
        assert "127.0.0.2" not in acl["allow"]
        # An admin invites someone from a server the bridge does not allow, from Element.
        await element.room_invite(room_id, outsider.user_id)
        join = await outsider.join(room_id)
        assert isinstance(join, JoinError), join
        # Refused by the server ACL itself, not by a kick that came first.
        assert join.status_code == "M_FORBIDDEN" and "banned" in join.message, join
        assert await membership(fed, room_id, outsider.user_id) != "join"
    finally:
        await element.close()
        await outsider.close()


async def test_unlisted_remote_user_is_removed_by_drift_repair(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    crm = Crm(fed)
    element = await matrix_user(fed.ours, unique("boss"))
    friend = await matrix_user(fed.partner, unique("friend"))
    admin_id = await crm.user("Admin Inviter", role="admin", matrix_id=element.user_id)
    result = await crm.project(unique("p"), [admin_id])
    room_id = result["project"]["roomId"]
    try:
        await accept_invite(element, room_id)
        await element.room_invite(room_id, friend.user_id)

        async def removed() -> bool:
            event = await state_event(fed, room_id, "m.room.member", friend.user_id)
            return event.get("membership") == "leave"

        await eventually(removed, timeout=30, interval=0.3)
        assert any(
            element.user_id in r.getMessage() and friend.user_id in r.getMessage()
            for r in caplog.records
        ), "the log names who invited them"
    finally:
        await element.close()
        await friend.close()


async def test_guest_may_post_but_not_redact_others_or_pin(fed: Federation) -> None:
    crm, app, url = Crm(fed), fed.app, fed.bridge_url
    guest = await matrix_user(fed.partner, unique("g"))
    alice_id = await crm.user("Alice Power")
    result = await crm.project(unique("p"), [alice_id], guests=[guest.user_id])
    room_id, cid = result["project"]["roomId"], conversation_of(result["project"])
    alice = await app[USERS].get(alice_id)
    try:
        await accept_invite(guest, room_id)
        async with api_for(app, url, alice) as api:
            status, message, _ = await api.post(
                "/api/chat/send", {"conversationId": cid, "content": "mine"}
            )
            assert status == 201
        own = await guest.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "guest's own"}
        )
        assert isinstance(own, RoomSendResponse), own
        await has_event(guest, room_id, message["eventId"])
        refused = await guest.room_redact(room_id, message["eventId"], reason="not yours")
        assert getattr(refused, "status_code", None) == "M_FORBIDDEN", refused
        allowed = await guest.room_redact(room_id, own.event_id)
        assert not hasattr(allowed, "status_code"), allowed
        pin = await guest.room_put_state(
            room_id, "m.room.pinned_events", {"pinned": [own.event_id]}
        )
        assert getattr(pin, "status_code", None) == "M_FORBIDDEN", pin
    finally:
        await guest.close()


async def test_hostile_guest_server_yields_clean_payloads(fed: Federation) -> None:
    """What a hostile server can put in events its users send: wrong types, markup, bidi
    overrides, our own record (com.crm.message) claimed, foreign URLs, the largest event."""
    crm, app, url = Crm(fed), fed.app, fed.bridge_url
    guest = await matrix_user(fed.partner, unique("evil"))
    alice_id = await crm.user("Alice Target")
    result = await crm.project(unique("p"), [alice_id], guests=[guest.user_id])
    room_id, cid = result["project"]["roomId"], conversation_of(result["project"])
    alice = await app[USERS].get(alice_id)
    socket = await Recorder("alice").connect(url, token(app, alice))
    try:
        await accept_invite(guest, room_id)
        bogus_name = "<img src=x onerror=alert(1)>\u202eEvil\x07 " + "Z" * 200
        resp = await guest.set_displayname(bogus_name[:250])
        assert not hasattr(resp, "status_code"), resp
        # Synapse's client API checks body and msgtype of m.room.message only; any other
        # field (and any field of other event types) is what the sender says it is.
        crafted = [
            ("m.sticker", {"body": 12345, "url": 99, "info": ["x"], "msgtype": 7}),
            ("m.room.message", {"msgtype": "m.text", "body": "x" * 60000}),
            (
                "m.room.message",
                {
                    "msgtype": "m.image",
                    "body": "<b>img</b>",
                    "formatted_body": "<script>x()</script>",
                    "url": "https://evil.example/track.png",
                    "info": {"mimetype": {"a": 1}, "size": "huge"},
                },
            ),
            (
                "m.room.message",
                {
                    "msgtype": "m.file",
                    "body": "f",
                    "filename": {"x": 1},
                    "url": "mxc://evil.example/abc",
                    "info": {"mimetype": "text/html; charset=x", "size": -5},
                },
            ),
            (
                "m.room.message",
                {
                    "msgtype": "m.text",
                    "body": "spoof",
                    "com.crm.message": {
                        "type": "voice",
                        "content": "not what Element shows",
                        "attachments": [{"mxc": f"mxc://{fed.config['homeserver.domain']}/s"}],
                    },
                },
            ),
            ("m.room.message", {"msgtype": "m.text", "body": "bad relation",
                                "m.relates_to": {"rel_type": 5, "event_id": ["x"]}}),
        ]  # fmt: skip
        ids = []
        for kind, content in crafted:
            sent = await guest.room_send(room_id, kind, content)
            assert isinstance(sent, RoomSendResponse), (content, sent.message)
            ids.append(sent.event_id)
        async with api_for(app, url, alice) as api:
            for event_id in ids:
                live = await socket.wait("new_message", lambda m, e=event_id: m["eventId"] == e)
                _assert_clean(live, fed)
            status, page, _ = await api.get(f"/api/chat/messages/{cid}")
            assert status == 200
            shown = [m for m in page["messages"] if m["eventId"] in ids]
            assert len(shown) == len(ids)
            for message in shown:
                _assert_clean(message, fed)
            by_id = {m["eventId"]: m for m in shown}
            assert by_id[ids[0]]["content"] == ""
            assert len(by_id[ids[1]]["content"]) == 60000
            assert by_id[ids[2]]["attachments"] == []
            # A file on a server outside the allow list: the bridge never fetches it.
            for attachment in by_id[ids[3]]["attachments"]:
                async with api.session.get(attachment["url"]) as resp:
                    assert resp.status == 404
            spoof = by_id[ids[4]]
            assert spoof["type"] == "text" and spoof["content"] == "spoof"
            assert spoof["attachments"] == []
            status, conversations, _ = await api.get("/api/chat/conversations")
            assert status == 200
            mine = next(c for c in conversations if c["_id"] == cid)
            for participant in mine["participants"]:
                _assert_clean_user(participant)
    finally:
        await socket.close()
        await guest.close()


def _assert_clean_user(user: dict[str, Any]) -> None:
    name = user["name"]
    assert isinstance(name, str) and 0 < len(name) <= 128
    assert "<" not in name and "\u202e" not in name and "\x07" not in name
    assert user.get("avatar") is None or isinstance(user["avatar"], str)


def _assert_clean(message: dict[str, Any], fed: Federation) -> None:
    assert isinstance(message["content"], str)
    assert message["type"] in ("text", "file", "image", "link", "voice")
    _assert_clean_user(message["sender"])
    for attachment in message["attachments"]:
        assert isinstance(attachment["mimetype"], str) and "/" in attachment["mimetype"]
        assert isinstance(attachment["size"], int) and attachment["size"] >= 0
        assert isinstance(attachment["originalName"], str)
        assert attachment["url"].startswith(fed.bridge_url + "/api/chat/media/")


async def test_what_a_guest_server_receives_holds_no_crm_internals(fed: Federation) -> None:
    """The room state a guest's server holds: no emails, no internal URLs in our events."""
    crm = Crm(fed)
    guest = await matrix_user(fed.partner, unique("g"))
    alice_id = await crm.user("Alice Private")
    status, _ = await crm.put(
        f"/users/{alice_id}",
        {"name": "Alice Private", "email": "alice.private@corp.example", "role": "manager"},
    )
    assert status == 200
    result = await crm.project(unique("p"), [alice_id], guests=[guest.user_id])
    room_id = result["project"]["roomId"]
    try:
        await accept_invite(guest, room_id)
        state = await guest.room_get_state(room_id)
        events = getattr(state, "events", None)
        assert events, state
        text = repr(events)
        assert "corp.example" not in text and "@example.com" not in text
        ours = [e for e in events if e["type"].startswith("com.crm.")]
        assert [e["type"] for e in ours] == ["com.crm.project"]
        assert set(ours[0]["content"]) == {"id", "emoji", "color"}
        assert "http" not in repr(ours) and "/api/" not in text
        kinds = {e["type"] for e in events}
        assert "m.room.server_acl" in kinds
    finally:
        await guest.close()


async def test_direct_chats_stay_on_this_homeserver(fed: Federation) -> None:
    crm, app, url = Crm(fed), fed.app, fed.bridge_url
    alice_id, bob_id = await crm.user("Alice Dm"), await crm.user("Bob Dm")
    alice = await app[USERS].get(alice_id)
    async with api_for(app, url, alice) as api:
        status, created, _ = await api.post("/api/chat/direct/create", {"userId": bob_id})
        assert status in (200, 201), created
    acl = await state_event(fed, created["matrixRoomId"], "m.room.server_acl", as_user=alice.mxid)
    domain = fed.config["homeserver.domain"]
    assert acl == {"allow": sorted([domain, "localhost"]), "deny": [], "allow_ip_literals": False}
