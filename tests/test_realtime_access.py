"""Access that ends while a socket is open: removal and deactivation (at once, on every
process, even with the Matrix route dead), an expiring token, and a stale room membership
that the delivery gate holds back.

The multi-process test runs its own Synapse, bridge and Redis (fault_support): it kills the
bridge that receives the homeserver's transactions, so only the directory's own route can
evict the sockets, and restarts it to check sockets are authorised afresh.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import socketio

from bridge.api.auth import VERIFIER
from bridge.context import MATRIX, ROOM_MEMBERS
from bridge.ids import room_id_for_conversation
from bridge.realtime import ACCESS, SIO
from bridge.realtime.rooms import conversation_room
from tests.api_support import api_for, crm_user, project_chat, second_facade, token
from tests.conftest import unique
from tests.fault_support import fault_stack
from tests.helpers import eventually
from tests.realtime_support import Directory, Recorder, conversation_of, settle


async def _true(value: bool) -> bool:
    return value


async def _send(url: str, bearer: str, cid: str, content: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + "/api/chat/send",
            json={"conversationId": cid, "content": content},
            headers={"Authorization": f"Bearer {bearer}"},
        ) as resp,
    ):
        body = await resp.json()
        assert resp.status == 201, body
        return body


async def _refusal(url: str, bearer: str) -> dict[str, Any]:
    client = socketio.AsyncClient(reconnection=False)
    refusals: list[Any] = []
    client.on("connect_error", lambda data: refusals.append(data))
    try:
        await client.connect(url, auth={"token": bearer}, transports=["websocket"], wait_timeout=10)
    except socketio.exceptions.ConnectionError:
        pass
    else:
        await client.disconnect()
        raise AssertionError("connected")
    assert len(refusals) == 1, refusals
    return refusals[0]


async def test_removal_and_deactivation_reach_every_process_at_once(tmp_path: Path) -> None:
    async with fault_stack(tmp_path, redis="private") as fs:
        b = await fs.facade("facade-b").start()
        c = await fs.facade("facade-c").start()
        sockets: list[Recorder] = []
        try:
            alice = await fs.directory.user("Alice Stays")
            bob = await fs.directory.user("Bob Removed")
            carol = await fs.directory.user("Carol Deactivated")
            project_id = unique("p")
            project = await fs.directory.project(project_id, "Access", [alice, bob, carol], alice)
            cid = conversation_of(project)

            async def open_socket(name: str, url: str, uid: str) -> Recorder:
                sockets.append(await Recorder(name).connect(url, fs.token(uid)))
                return sockets[-1]

            alice_b = await open_socket("alice@B", b.url, alice)
            bob_b, bob_c = (
                await open_socket("bob@B", b.url, bob),
                await open_socket("bob@C", c.url, bob),
            )
            carol_b = await open_socket("carol@B", b.url, carol)
            carol_c = await open_socket("carol@C", c.url, carol)
            first = await _send(b.url, fs.token(alice), cid, "everyone hears this")
            for sock in (alice_b, bob_b, bob_c, carol_b, carol_c):
                await sock.wait("new_message", lambda m: m["_id"] == first["_id"])

            # The bridge that receives transactions is gone: no leave comes back from Matrix.
            fs.bridge.kill()
            via_b = Directory(b.url, fs.config["admin_api.token"])
            await via_b.project(project_id, "Access", [alice, carol], alice)
            # At once: the message right after the removal does not reach Bob, anywhere.
            after_removal = await _send(b.url, fs.token(alice), cid, "bob has gone")
            for sock in (alice_b, carol_b, carol_c):
                await sock.wait("new_message", lambda m: m["_id"] == after_removal["_id"])
            await settle(1.0)
            for sock in (bob_b, bob_c):
                assert [m["_id"] for m in sock.of("new_message")] == [first["_id"]], sock.name
                assert sock.client.connected  # still a user, just not in this conversation

            # Deactivated: an error, then every socket of Carol's closes, on both processes.
            async with (
                aiohttp.ClientSession() as session,
                session.delete(f"{via_b.base}/users/{carol}", headers=via_b.headers) as resp,
            ):
                assert resp.status == 200, await resp.text()
            for sock in (carol_b, carol_c):
                error = await sock.wait("error", timeout=10)
                assert error["errcode"] == "M_USER_DEACTIVATED", error
                await eventually(lambda s=sock: _true(not s.client.connected), timeout=10)
            refused = await _refusal(c.url, fs.token(carol))
            assert refused["data"]["errcode"] == "M_USER_DEACTIVATED"
            after_deactivation = await _send(b.url, fs.token(alice), cid, "carol has gone too")
            await alice_b.wait("new_message", lambda m: m["_id"] == after_deactivation["_id"])

            # The bridge restarts (and the leaves come back from Matrix): sockets that
            # reconnect to it are authorised afresh.
            await fs.bridge.start()
            refused = await _refusal(fs.url, fs.token(carol))
            assert refused["data"]["errcode"] == "M_USER_DEACTIVATED"
            bob_a = await open_socket("bob@A", fs.url, bob)
            alice_a = await open_socket("alice@A", fs.url, alice)
            answer = await bob_a.call("join_conversation", {"conversationId": cid})
            assert answer["errcode"] == "M_NOT_FOUND", answer
            after_restart = await _send(fs.url, fs.token(alice), cid, "after the restart")
            await alice_a.wait("new_message", lambda m: m["_id"] == after_restart["_id"])
            await settle(1.0)
            assert bob_a.of("new_message") == []
            for sock in (bob_b, bob_c):
                assert [m["_id"] for m in sock.of("new_message")] == [first["_id"]], sock.name
        finally:
            for sock in sockets:
                await sock.close()
            b.stop()
            c.stop()


async def test_token_expiry_ends_the_socket_with_an_error_first(stack) -> None:
    app, url = stack.app, stack.bridge_url
    user = await crm_user(app, "Short Token")
    sock = Recorder("short")
    order: list[str] = []
    sock.client.on("disconnect", lambda *_: order.append("disconnect"))
    sock.client.on("error", lambda data: order.append(f"error:{data.get('errcode')}"))
    # Accepted for 3 more seconds: expiry counts the configured clock-skew leeway, as REST.
    leeway = int(app[VERIFIER].leeway)
    await sock.connect(url, token(app, user, ttl=3 - leeway))
    try:
        await eventually(lambda: _true("disconnect" in order), timeout=15)
        assert order == ["error:M_UNKNOWN_TOKEN", "disconnect"], order
        refused = await _refusal(url, token(app, user, ttl=-leeway - 5))
        assert refused["data"]["errcode"] == "M_UNKNOWN_TOKEN"
        # A fresh token connects again.
        again = await Recorder("again").connect(url, token(app, user))
        assert again.client.connected
        await again.close()
    finally:
        await sock.close()


async def test_a_stale_room_membership_is_held_back_at_delivery(stack) -> None:
    app, url = stack.app, stack.bridge_url
    alice, olga = await crm_user(app, "Alice Member"), await crm_user(app, "Olga Outsider")
    conversation = await project_chat(app, [alice])
    cid = conversation.conversation_id
    a = await Recorder("alice").connect(url, token(app, alice))
    o = await Recorder("olga").connect(url, token(app, olga))
    try:
        # As if a removal had been lost: Olga's socket sits in the conversation's room.
        sid = o.client.get_sid("/")
        await app[SIO].enter_room(sid, conversation_room(cid))
        held = app[ACCESS].held_back
        async with api_for(app, url, alice) as api:
            status, sent, _ = await api.post(
                "/api/chat/send", {"conversationId": cid, "content": "members only"}
            )
        assert status == 201
        await a.wait("new_message", lambda m: m["_id"] == sent["_id"])
        await settle(1.0)
        assert o.of("new_message") == [] and o.of("conversation_update") == []
        assert app[ACCESS].held_back > held

        # And the gate took the socket out of the room, once a second look agreed.
        async def out() -> bool:
            return conversation_room(cid) not in app[SIO].manager.get_rooms(sid, "/")

        await eventually(out, timeout=10)
        assert o.of("resync") == []
    finally:
        await a.close()
        await o.close()


async def test_a_member_read_as_not_joined_for_a_moment_stays_in_and_hears_resync(
    stack,
) -> None:
    """room_member lagging the homeserver for a moment (as after a receiver restart) holds
    one event back, never takes a member's socket out of the conversation in silence: the
    second look finds them joined, the socket hears ``resync`` and gets what follows."""
    app, url = stack.app, stack.bridge_url
    alice, bob = await crm_user(app, "Alice Sender"), await crm_user(app, "Bob Lagged")
    conversation = await project_chat(app, [alice, bob])
    cid, room_id = conversation.conversation_id, conversation.room_id
    b = await Recorder("bob").connect(url, token(app, bob))
    members = app[ROOM_MEMBERS]
    try:
        async with api_for(app, url, alice) as api:

            async def send(content: str) -> dict[str, Any]:
                status, sent, _ = await api.post(
                    "/api/chat/send", {"conversationId": cid, "content": content}
                )
                assert status == 201, sent
                return sent

            await members.set(room_id, bob.mxid, "invite")  # the read that lags
            app[ACCESS].forget(room_id)
            held = app[ACCESS].held_back
            await send("while the row lags")
            await eventually(lambda: asyncio.sleep(0, app[ACCESS].held_back > held), timeout=10)
            await members.set(room_id, bob.mxid, "join")  # caught up
            await b.wait("resync", lambda d: d["conversationId"] == cid, timeout=10)
            sid = b.client.get_sid("/")
            assert conversation_room(cid) in app[SIO].manager.get_rooms(sid, "/")
            after = await send("after the lag")
            await b.wait("new_message", lambda m: m["_id"] == after["_id"], timeout=10)
    finally:
        await b.close()


async def test_a_leave_made_in_matrix_takes_sockets_out_on_every_process(stack) -> None:
    """The second route: a leave the directory did not make, seen only in a transaction.
    (Coverage of that route through the control channel; it also worked before.)"""
    app, url = stack.app, stack.bridge_url
    alice, bob = await crm_user(app, "Alice DM"), await crm_user(app, "Bob Leaves")
    async with api_for(app, url, alice) as api:
        status, created, _ = await api.post("/api/chat/direct/create", {"userId": bob.crm_user_id})
    assert status in (200, 201), created
    cid = created["_id"]
    room_id = room_id_for_conversation(cid)
    async with second_facade(stack.config) as other:
        other_url = other.config["appservice.address"]
        bob_here = await Recorder("bob@A").connect(url, token(app, bob))
        bob_there = await Recorder("bob@B").connect(other_url, token(app, bob))
        alice_there = await Recorder("alice@B").connect(other_url, token(app, alice))
        try:
            # Bob leaves from Matrix itself (as Element would), not through the directory.
            await app[MATRIX].leave(room_id, as_user=bob.mxid)
            for sock, server in ((bob_here, app), (bob_there, other.app)):
                sid = sock.client.get_sid("/")
                await eventually(
                    lambda s=sid, m=server[SIO].manager: _true(
                        conversation_room(cid) not in m.get_rooms(s, "/")
                    ),
                    timeout=15,
                )
            async with api_for(app, other_url, alice) as api:
                status, sent, _ = await api.post(
                    "/api/chat/send", {"conversationId": cid, "content": "bob left in Matrix"}
                )
            assert status == 201, sent
            await alice_there.wait("new_message", lambda m: m["_id"] == sent["_id"])
            await settle(1.0)
            assert bob_here.of("new_message") == [] and bob_there.of("new_message") == []
        finally:
            for sock in (bob_here, bob_there, alice_there):
                await sock.close()
