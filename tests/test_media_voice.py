"""Voice notes as Element plays them, their duration set after the fact, and signed media URLs
that a bare <img src> loads (and that stop loading when they should)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from nio import RoomSendResponse

from bridge.chat.media_urls import media_signer
from bridge.context import EVENT_INDEX, MATRIX, USERS
from bridge.logs import redact_query
from tests.api_support import (
    api_for,
    crm_user,
    media_path,
    png,
    project_chat,
    second_facade,
    token,
)
from tests.conftest import unique
from tests.helpers import eventually, matrix_user
from tests.realtime_support import Directory, Recorder, conversation_of
from tests.test_media_import import element_timeline

pytestmark = pytest.mark.integration

# Just enough of an Ogg Opus file and of a MediaRecorder WebM for their types to be found.
OGG = b"OggS\x00\x02" + b"\x00" * 20 + b"\x01\x1eOpusHead" + b"\x00" * 400
WEBM = bytes.fromhex("1A45DFA3") + b"\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x84webm"
WEBM += b"\x00" * 400
VOICE = "org.matrix.msc3245.voice"
AUDIO = "org.matrix.msc1767.audio"


def form(name: str, data: bytes, content_type: str) -> aiohttp.FormData:
    body = aiohttp.FormData()
    body.add_field("file", data, filename=name, content_type=content_type)
    return body


def crm_attachment(uploaded: dict) -> dict:
    """What the CRM's page makes of its upload's answer."""
    return {
        "filename": uploaded["originalName"],
        "originalName": uploaded["originalName"],
        "mimetype": uploaded["mimeType"],
        "size": uploaded["size"],
        "url": uploaded["fileUrl"],
    }


async def test_voice_notes_are_element_voice_messages_with_durations(stack) -> None:
    app, url = stack.app, stack.bridge_url
    # Element is Bob's linked account (a stranger would be removed from a project room).
    element = await matrix_user(stack.synapse, unique("elvoice"))
    alice, bob = await asyncio.gather(crm_user(app), crm_user(app, matrix_id=element.user_id))
    conv = await project_chat(app, [alice, bob])
    cid = conv.conversation_id
    socket = Recorder("bob")
    try:
        await app[MATRIX].invite(conv.room_id, element.user_id)
        await element.join(conv.room_id)
        await socket.connect(url, token(app, bob))
        async with api_for(app, url, alice) as a, api_for(app, url, bob) as b:
            status, uploaded, _ = await a.post(
                "/api/chat/upload", data=form("voice-note.ogg", OGG, "audio/ogg")
            )
            assert status == 201 and uploaded["mimeType"] == "audio/ogg", uploaded
            note = {**crm_attachment(uploaded), "duration": 3.5}
            status, sent, _ = await a.post(
                "/api/chat/send",
                {"conversationId": cid, "content": "", "type": "voice", "attachments": [note],
                 "mentions": [], "replyTo": None},
            )  # fmt: skip
            assert status == 201, sent
            assert sent["type"] == "voice" and sent["attachments"][0]["duration"] == 3.5

            # Element: m.audio marked as a voice message, the duration in ms.
            async def note() -> dict | None:
                return (await element_timeline(element, conv.room_id)).get(sent["eventId"])

            content = await eventually(note)
            assert content["msgtype"] == "m.audio" and content[VOICE] == {}
            assert content["info"] == {"mimetype": "audio/ogg", "size": len(OGG), "duration": 3500}
            assert content[AUDIO]["duration"] == 3500
            assert (await element.download(mxc=content["url"])).body == OGG

            # The page reports the length it measured: only the sender may set it.
            body = {"messageId": sent["_id"], "attachmentIndex": 0, "duration": 4.25}
            status, error, _ = await b.post("/api/chat/update-duration", body)
            assert (status, error["errcode"]) == (403, "M_FORBIDDEN"), error
            refused = [
                {**body, "attachmentIndex": 1},
                {**body, "duration": -1},
                {**body, "duration": "4"},
                {"attachmentIndex": 0, "duration": 1},
            ]
            for bad in refused:
                status, error, _ = await a.post("/api/chat/update-duration", bad)
                assert (status, error["errcode"]) == (400, "M_INVALID_PARAM"), (bad, error)
            status, result, _ = await a.post("/api/chat/update-duration", body)
            assert status == 200, result
            assert result == {"success": True, "messageId": sent["_id"], "attachmentIndex": 0,
                              "duration": 4.25, "changed": True}  # fmt: skip
            status, again, _ = await a.post("/api/chat/update-duration", body)
            assert (status, again["changed"]) == (200, False)
            # Bob's socket hears it as message_update (the edit's transaction).
            await socket.wait(
                "message_update",
                lambda m: m["_id"] == sent["_id"] and m["attachments"][0]["duration"] == 4.25,
            )

            # Every later read shows it, and it is no visible edit.
            page = (await b.get(f"/api/chat/messages/{cid}"))[1]["messages"]
            read = {m["_id"]: m for m in page}[sent["_id"]]
            assert read["type"] == "voice" and read["attachments"][0]["duration"] == 4.25
            assert read["edited"] is False and read["content"] == ""
            assert set(read["attachments"][0]) == {
                "url", "filename", "originalName", "mimetype", "size", "duration"
            }  # fmt: skip

            # In Matrix: one m.replace edit by Alice's puppet with the new length (ms).
            async def edits_of_note() -> list[dict]:
                return [
                    c
                    for c in (await element_timeline(element, conv.room_id)).values()
                    if (c.get("m.relates_to") or {}).get("event_id") == sent["eventId"]
                ]

            edits = await eventually(edits_of_note)
            assert len(edits) == 1 and edits[0]["_sender"] == alice.mxid
            assert edits[0]["m.new_content"]["info"]["duration"] == 4250
            assert edits[0]["m.new_content"][VOICE] == {}

            # A text edit afterwards keeps the duration.
            status, edited, _ = await a.post(
                "/api/chat/edit-message", {"messageId": sent["_id"], "content": "listen"}
            )
            assert status == 200 and edited["content"] == "listen", edited
            assert edited["attachments"][0]["duration"] == 4.25 and edited["edited"] is True

            # A voice note from Bob's linked Element account: Bob is its sender, but an edit
            # by his puppet would be ignored (Matrix takes edits from the original's sender
            # only), so the bridge says where the duration can be set instead of a no-op.
            uploaded_el, _ = await element.upload(
                lambda *_: OGG, content_type="audio/ogg", filesize=len(OGG)
            )
            from_element = await element.room_send(
                conv.room_id,
                "m.room.message",
                {"msgtype": "m.audio", "body": "note.ogg", "url": uploaded_el.content_uri,
                 "info": {"mimetype": "audio/ogg", "size": len(OGG)}, VOICE: {}},
            )  # fmt: skip
            assert isinstance(from_element, RoomSendResponse), from_element
            await eventually(lambda: app[EVENT_INDEX].get(from_element.event_id))
            page = (await b.get(f"/api/chat/messages/{cid}"))[1]["messages"]
            mine = next(m for m in page if m.get("eventId") == from_element.event_id)
            body = {"messageId": mine["_id"], "attachmentIndex": 0, "duration": 2.0}
            status, error, _ = await b.post("/api/chat/update-duration", body)
            assert (status, error["errcode"]) == (403, "M_FORBIDDEN"), error
            assert "linked Matrix account" in error["message"], error

            # Chrome's MediaRecorder WebM (found to be video/webm) is a voice note too.
            status, recorded, _ = await a.post(
                "/api/chat/upload", data=form("rec.webm", WEBM, "audio/webm")
            )
            assert status == 201 and recorded["mimeType"] == "video/webm", recorded
            status, webm, _ = await a.post(
                "/api/chat/send",
                {"conversationId": cid, "content": "", "type": "voice",
                 "attachments": [{**crm_attachment(recorded), "duration": 1.2}]},
            )  # fmt: skip
            assert status == 201, webm
            event = await app[MATRIX].get_event(conv.room_id, webm["eventId"], as_user=bob.mxid)
            assert event["content"]["msgtype"] == "m.audio" and VOICE in event["content"]
            assert event["content"]["info"]["mimetype"] == "audio/webm"
            assert event["content"]["info"]["duration"] == 1200

            # A voice message must bring its audio.
            status, error, _ = await a.post(
                "/api/chat/send", {"conversationId": cid, "content": "hi", "type": "voice"}
            )
            assert (status, error["errcode"]) == (400, "M_INVALID_PARAM")
            status, picture, _ = await a.post(
                "/api/chat/upload", data=form("p.png", png(), "image/png")
            )
            status, error, _ = await a.post(
                "/api/chat/send",
                {"conversationId": cid, "content": "", "type": "voice",
                 "attachments": [crm_attachment(picture)]},
            )  # fmt: skip
            assert (status, error["errcode"]) == (400, "M_INVALID_PARAM"), error
            assert "audio" in error["message"]

            # Element's own voice message reads as type voice, with its duration in seconds.
            mxc = await app[MATRIX].upload(OGG, "audio/ogg", "Voice message.ogg")
            from_element = await element.room_send(
                conv.room_id,
                "m.room.message",
                {"msgtype": "m.audio", "body": "Voice message", "url": mxc,
                 "info": {"mimetype": "audio/ogg", "size": len(OGG), "duration": 2000},
                 AUDIO: {"duration": 2000, "waveform": [0, 512, 1024]}, VOICE: {}},
            )  # fmt: skip
            assert isinstance(from_element, RoomSendResponse), from_element.message
            await eventually(lambda: app[EVENT_INDEX].get(from_element.event_id))
            page = (await a.get(f"/api/chat/messages/{cid}"))[1]["messages"]
            theirs = next(m for m in page if m["eventId"] == from_element.event_id)
            assert theirs["type"] == "voice" and theirs["attachments"][0]["duration"] == 2.0
    finally:
        await socket.close()
        await element.close()


async def test_signed_media_urls(stack) -> None:
    app, url = stack.app, stack.bridge_url
    directory = Directory(url, stack.config["admin_api.token"])
    alice_id, bob_id, eve_id = [await directory.user(n) for n in ("Alice", "Bob", "Eve")]
    project_id = unique("p")
    project = await directory.project(project_id, "Signed", [alice_id, bob_id], alice_id)
    cid = conversation_of(project)
    alice, bob, eve = [await app[USERS].get(i) for i in (alice_id, bob_id, eve_id)]
    assert alice and bob and eve
    image = png(5, 5)
    async with (
        api_for(app, url, alice) as a,
        api_for(app, url, bob) as b,
        aiohttp.ClientSession() as session,
    ):
        status, uploaded, _ = await a.post(
            "/api/chat/upload", data=form("pic.png", image, "image/png")
        )
        assert status == 201
        status, sent, _ = await a.post(
            "/api/chat/send",
            {"conversationId": cid, "content": "", "type": "image",
             "attachments": [crm_attachment(uploaded)]},
        )  # fmt: skip
        assert status == 201, sent
        page = (await b.get(f"/api/chat/messages/{cid}"))[1]["messages"]
        signed = page[-1]["attachments"][0]["url"]
        path = media_path(signed)
        assert signed.startswith(f"{url}{path}?u={bob.crm_user_id}&exp=")

        async def status_of(target: str, **kw) -> int:
            async with session.get(target, **kw) as resp:
                if resp.status == 200:
                    assert await resp.read() == image
                return resp.status

        # No header, no cookie, no token: the URL alone, for Bob.
        assert await status_of(signed) == 200
        signer = media_signer(app)
        tampered = [
            signed[:-1] + ("A" if signed[-1] != "A" else "B"),  # the signature
            signed.replace(f"u={bob.crm_user_id}", f"u={eve.crm_user_id}"),  # another user
            signed.replace("&exp=", "&exp=9"),  # a later expiry
        ]
        for target in tampered:
            assert await status_of(target) == 404, target
        # Eve's own valid signature does not help her: she is no participant.
        assert await status_of(signer.sign(path, eve.crm_user_id)) == 404
        # Expired: a correct signature with an expiry in the past.
        expired = signer.sign(path, bob.crm_user_id, expiry=int(time.time()) - 5)
        assert await status_of(expired) == 404
        # The header token keeps working, and so does the deprecated ?token=.
        assert await status_of(url + path, headers=b.headers()) == 200
        assert await status_of(url + path, params={"token": b.bearer}) == 200
        assert await status_of(url + path) == 401
        # The signature never reaches the access log.
        assert "sig=<redacted>" in redact_query(signed.split("?", 1)[1])

        # The CRM takes Bob out of the project: his URL stops working; Alice's does not.
        alices = (await a.get(f"/api/chat/messages/{cid}"))[1]["messages"][-1]
        await directory.project(project_id, "Signed", [alice_id], alice_id)

        async def refused() -> bool:
            return await status_of(signed) == 404

        await eventually(refused)
        assert await status_of(alices["attachments"][0]["url"]) == 200


async def test_each_socket_gets_urls_signed_for_its_user_across_processes(stack) -> None:
    """A new_message with a file reaches Bob's and Carol's sockets on another facade process
    (over Redis) and Alice's on this one, each with URLs signed for its own user."""
    app, url = stack.app, stack.bridge_url
    alice, bob, carol = await asyncio.gather(crm_user(app), crm_user(app), crm_user(app))
    conv = await project_chat(app, [alice, bob, carol])
    cid = conv.conversation_id
    image = png(6, 2)
    async with second_facade(stack.config) as other:
        other_url = other.config["appservice.address"]
        sockets = {
            "alice": await Recorder("alice").connect(url, token(app, alice)),
            "bob": await Recorder("bob").connect(other_url, token(app, bob)),
            "carol": await Recorder("carol").connect(other_url, token(app, carol)),
        }
        try:
            async with api_for(app, url, alice) as a, aiohttp.ClientSession() as session:
                status, uploaded, _ = await a.post(
                    "/api/chat/upload", data=form("wide.png", image, "image/png")
                )
                assert status == 201
                status, sent, _ = await a.post(
                    "/api/chat/send",
                    {"conversationId": cid, "content": "", "type": "image",
                     "attachments": [crm_attachment(uploaded)]},
                )  # fmt: skip
                assert status == 201, sent
                users = {"alice": alice, "bob": bob, "carol": carol}
                for name, socket in sockets.items():
                    got = await socket.wait("new_message", lambda m: m["_id"] == sent["_id"])
                    signed = got["attachments"][0]["url"]
                    assert f"?u={users[name].crm_user_id}&" in signed, (name, signed)
                    async with session.get(signed) as resp:
                        assert resp.status == 200 and await resp.read() == image
        finally:
            for socket in sockets.values():
                await socket.close()
