"""CRM → Matrix: the relation routes, read back from the homeserver as Element would.

Permissions follow the room's power levels (employee 0, manager 50, admin 100; redactions
need 50, pins 100 in project rooms); outsiders get the same 404 as an unknown id.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.context import EVENT_INDEX
from bridge.ids import conversation_id_for_room
from tests.api_support import api_for
from tests.conftest import unique
from tests.helpers import eventually, matrix_user
from tests.realtime_support import Directory
from tests.relations_support import accept_invite, person, raw_event, relations_of, users

pytestmark = pytest.mark.integration


async def element_pins_are(element: Any, room_id: str, want: list[str]) -> None:
    """Element's view of the pinned list reaches ``want`` (and, the bridge's pins being
    read-modify-writes, a pin lost to a stale read never does). With Synapse's workers the
    state is read from a worker that may not have replicated the last pin yet."""

    async def pins() -> bool:
        state = await element.room_get_state_event(room_id, "m.room.pinned_events")
        return getattr(state, "content", {}).get("pinned") == want

    await eventually(pins)


async def redacted_for_element(element: Any, room_id: str, event_id: str) -> dict[str, Any]:
    """The event as Element reads it, once its content is gone (with Synapse's workers the
    redaction reaches the worker that serves the read a moment after the delete answers)."""

    async def gone() -> dict[str, Any] | None:
        event = await raw_event(element, room_id, event_id)
        return event if event["content"] == {} else None

    return await eventually(gone)


def ok(status: int, body: Any, want: int = 200) -> Any:
    assert status == want, body
    return body


async def test_relation_routes_write_what_element_reads(stack) -> None:
    app, url = stack.app, stack.bridge_url
    directory = Directory(url, stack.config["admin_api.token"])
    element = await matrix_user(stack.synapse, unique("el"))
    ada_id = await person(directory, "Ada", "admin", matrix_id=element.user_id)
    alice_id = await person(directory, "Alice", "employee")
    bob_id = await person(directory, "Bob", "employee")
    mike_id = await person(directory, "Mike", "manager")
    eve_id = await person(directory, "Eve", "employee")
    members = [ada_id, alice_id, bob_id, mike_id]
    project_id = unique("p")
    project = await directory.project(project_id, "Routes", members, ada_id)
    other = await directory.project(unique("p"), "Elsewhere", [alice_id, eve_id], alice_id)
    room_id, cid = project["roomId"], conversation_id_for_room(project["roomId"])
    other_cid = conversation_id_for_room(other["roomId"])
    alice, bob = await users(app, alice_id, bob_id)
    try:
        await accept_invite(element, room_id)
        async with (
            api_for(app, url, alice) as a,
            api_for(app, url, bob) as b,
            api_for(app, url, mike_id) as m,
            api_for(app, url, ada_id) as d,
            api_for(app, url, eve_id) as e,
        ):

            async def history(api: Any = a) -> dict[str, dict[str, Any]]:
                body = ok(*(await api.get(f"/api/chat/messages/{cid}"))[:2])
                return {msg["_id"]: msg for msg in body["messages"]}

            root = ok(
                *(await b.post("/api/chat/send", {"conversationId": cid, "content": "root"}))[:2],
                201,
            )
            await eventually(lambda: app[EVENT_INDEX].get(root["eventId"]))

            # A reply with mentions: m.in_reply_to, m.mentions, and a fallback-free body.
            sent = {"conversationId": cid, "content": "agreed @Bob", "replyTo": root["_id"],
                    "mentions": [bob_id, mike_id]}  # fmt: skip
            reply = ok(*(await a.post("/api/chat/send", sent))[:2], 201)
            assert reply["replyTo"]["_id"] == root["_id"]
            assert reply["replyTo"]["content"] == "root"
            assert reply["replyTo"]["sender"]["_id"] == bob_id
            assert set(reply["mentions"]) == {bob_id, mike_id}
            event = await raw_event(element, room_id, reply["eventId"])
            content = event["content"]
            assert content["body"] == "agreed @Bob" and content["msgtype"] == "m.text"
            assert content["m.relates_to"] == {"m.in_reply_to": {"event_id": root["eventId"]}}
            mike = (await users(app, mike_id))[0]
            assert content["m.mentions"] == {"user_ids": [bob.mxid, mike.mxid]}
            bad = {"conversationId": cid, "content": "hi", "mentions": [eve_id]}
            status, body, _ = await a.post("/api/chat/send", bad)
            assert status == 400 and body["errcode"] == "M_INVALID_PARAM", body
            status, body, _ = await a.post(
                "/api/chat/send", {"conversationId": cid, "content": "x", "replyTo": "nope"}
            )
            assert status == 404, body

            # A thread reply: rel_type m.thread, falling back to a reply to the latest.
            threaded = ok(*(await a.post("/api/chat/send", {
                "conversationId": cid, "content": "in thread", "threadId": root["_id"]
            }))[:2], 201)  # fmt: skip
            assert threaded["threadId"] == root["_id"]
            rel = (await raw_event(element, room_id, threaded["eventId"]))["content"][
                "m.relates_to"
            ]
            assert rel == {
                "rel_type": "m.thread", "event_id": root["eventId"], "is_falling_back": True,
                "m.in_reply_to": {"event_id": root["eventId"]},
            }  # fmt: skip
            second = ok(*(await b.post("/api/chat/send", {
                "conversationId": cid, "content": "again", "threadId": root["_id"]
            }))[:2], 201)  # fmt: skip
            rel = (await raw_event(element, room_id, second["eventId"]))["content"]["m.relates_to"]
            assert rel["m.in_reply_to"] == {"event_id": threaded["eventId"]}
            page = await history()
            assert threaded["_id"] not in page and second["_id"] not in page
            assert page[root["_id"]]["threadCount"] == 2

            # Edits: only the sender; m.replace with m.new_content and a "* " body.
            edited = ok(*(await b.post("/api/chat/edit-message", {
                "messageId": root["_id"], "content": "root, better"
            }))[:2])  # fmt: skip
            assert edited["content"] == "root, better" and edited["edited"] is True
            assert edited["editedAt"] and edited["_id"] == root["_id"]
            edits = [
                ev
                for ev in await relations_of(element, room_id, root["eventId"])
                if ev["type"] == "m.room.message"
                and ev["content"].get("m.relates_to", {}).get("rel_type") == "m.replace"
            ]
            assert len(edits) == 1
            assert edits[0]["content"]["body"] == "* root, better"
            assert edits[0]["content"]["m.new_content"]["body"] == "root, better"
            assert edits[0]["content"]["m.new_content"]["msgtype"] == "m.text"
            page = await history()
            assert page[root["_id"]]["content"] == "root, better" and page[root["_id"]]["edited"]
            assert page[reply["_id"]]["replyTo"]["content"] == "root, better"
            status, body, _ = await a.post(
                "/api/chat/edit-message", {"messageId": root["_id"], "content": "mine now"}
            )
            assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
            status, body, _ = await b.post(
                "/api/chat/edit-message", {"messageId": root["_id"], "content": "  "}
            )
            assert status == 400 and body["errcode"] == "M_INVALID_PARAM", body

            # Reactions: twice is one; unreact redacts only one's own.
            react = {"messageId": root["_id"], "key": "👍"}
            first = ok(*(await a.post("/api/chat/react", react))[:2])
            again = ok(*(await a.post("/api/chat/react", react))[:2])
            both = await asyncio.gather(
                a.post("/api/chat/react", react), b.post("/api/chat/react", react)
            )
            assert [s for s, _, _ in both] == [200, 200]
            assert first["reactions"] == [
                {"key": "👍", "count": 1, "users": [alice_id], "me": True}
            ]
            assert again["reactions"] == first["reactions"]

            async def annotations() -> list[dict[str, Any]]:
                chunk = await relations_of(element, room_id, root["eventId"])
                return [ev for ev in chunk if ev["type"] == "m.reaction" and ev.get("content")]

            found = await annotations()
            assert sorted(ev["sender"] for ev in found) == sorted([alice.mxid, bob.mxid])
            assert found[0]["content"]["m.relates_to"]["rel_type"] == "m.annotation"
            assert {ev["content"]["m.relates_to"]["key"] for ev in found} == {"👍"}
            by_bob = (await history(b))[root["_id"]]["reactions"]
            assert by_bob[0]["count"] == 2 and by_bob[0]["me"] is True
            assert set(by_bob[0]["users"]) == {alice_id, bob_id}
            gone = ok(*(await a.post("/api/chat/unreact", react))[:2])
            assert gone["reactions"] == [{"key": "👍", "count": 1, "users": [bob_id], "me": False}]
            assert (
                ok(*(await a.post("/api/chat/unreact", react))[:2])["reactions"]
                == gone["reactions"]
            )
            assert [ev["sender"] for ev in await annotations()] == [bob.mxid]

            # Pins: every member of a project may pin (issue 19), an employee as the admin.
            pinned = ok(*(await a.post("/api/chat/pin-message", {"messageId": root["_id"]}))[:2])
            assert pinned["isPinned"] is True
            ok(*(await d.post("/api/chat/pin-message", {"messageId": reply["_id"]}))[:2])
            ok(*(await d.post("/api/chat/pin-message", {"messageId": reply["_id"]}))[:2])
            await element_pins_are(element, room_id, [root["eventId"], reply["eventId"]])
            listed = ok(*(await a.get(f"/api/chat/pinned-messages/{cid}"))[:2])["data"]
            assert [msg["_id"] for msg in listed] == [reply["_id"], root["_id"]]
            assert listed[1]["content"] == "root, better" and listed[1]["isPinned"]
            ok(*(await d.post("/api/chat/unpin-message", {"messageId": root["_id"]}))[:2])
            await element_pins_are(element, room_id, [reply["eventId"]])
            assert [
                msg["_id"]
                for msg in ok(*(await a.get(f"/api/chat/pinned-messages/{cid}"))[:2])["data"]
            ] == [reply["_id"]]

            # Deletes: own yes, an employee on another's no, a project manager yes.
            status, body, _ = await b.post("/api/chat/delete-message", {"messageId": reply["_id"]})
            assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
            own = ok(
                *(await a.post("/api/chat/send", {"conversationId": cid, "content": "oops"}))[:2],
                201,
            )
            await eventually(lambda: app[EVENT_INDEX].get(own["eventId"]))
            deleted = ok(*(await a.post("/api/chat/delete-message", {"messageId": own["_id"]}))[:2])
            assert deleted == {
                "message": "Message deleted",
                "conversationId": cid,
                "messageId": own["_id"],
            }
            page = await history()  # at once: the bridge knows what it deleted
            assert own["_id"] not in page
            redacted = await redacted_for_element(element, room_id, own["eventId"])
            assert "redacted_because" in redacted["unsigned"]
            ok(*(await m.post("/api/chat/delete-message", {"messageId": reply["_id"]}))[:2])
            page = await history()
            assert own["_id"] not in page and reply["_id"] not in page
            await redacted_for_element(element, room_id, reply["eventId"])
            listing = ok(*(await b.get("/api/chat/conversations"))[:2])
            mine = next(c for c in listing if c["_id"] == cid)
            assert mine["lastMessage"]["_id"] == root["_id"]
            status, body, _ = await a.post("/api/chat/delete-message", {"messageId": own["_id"]})
            assert status == 404, body

            # Unknown ids, other conversations and outsiders: one and the same 404.
            unknown = "A" * 43
            calls = [
                ("/api/chat/edit-message", {"messageId": unknown, "content": "x"}),
                ("/api/chat/delete-message", {"messageId": unknown}),
                ("/api/chat/react", {"messageId": unknown, "key": "👍"}),
                ("/api/chat/unreact", {"messageId": unknown, "key": "👍"}),
                ("/api/chat/pin-message", {"messageId": unknown}),
                ("/api/chat/unpin-message", {"messageId": unknown}),
            ]
            for path, body_ in calls:
                status, nobody, _ = await a.post(path, body_)
                assert status == 404 and nobody["errcode"] == "M_NOT_FOUND", (path, nobody)
                outsider = {**body_, "messageId": root["_id"]}
                status, body, _ = await e.post(path, outsider)
                assert (status, body) == (404, nobody), (path, body)
                elsewhere = {**outsider, "conversationId": other_cid}
                status, body, _ = await a.post(path, elsewhere)
                assert (status, body) == (404, nobody), (path, body)
            status, body, _ = await e.get(f"/api/chat/pinned-messages/{cid}")
            assert status == 404 and body["errcode"] == "M_NOT_FOUND"
            for bad_body in ({}, {"messageId": 5}, {"messageId": root["_id"], "key": ""}):
                status, body, _ = await a.post("/api/chat/react", bad_body)
                assert status == 400 and body["errcode"] == "M_INVALID_PARAM", body

            # A removed member loses access to reactions and pins.
            await directory.project(project_id, "Routes", [ada_id, bob_id, mike_id], ada_id)

            async def removed() -> bool:
                status, _, _ = await a.get(f"/api/chat/pinned-messages/{cid}")
                return status == 404

            await eventually(removed)
            status, body, _ = await a.post("/api/chat/react", react)
            assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    finally:
        await element.close()
