"""Uploads into the Matrix media repo, file and image messages, authenticated download."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from nio import RoomSendResponse

from bridge.api.uploads import sanitize_filename, sniff
from bridge.context import EVENT_INDEX, MATRIX
from tests.api_support import api_for, crm_user, media_and_sends, media_path, png, project_chat
from tests.conftest import unique
from tests.helpers import eventually, matrix_user

pytestmark = pytest.mark.integration


PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 200


def form(
    name: str, data: bytes, content_type: str = "application/octet-stream"
) -> aiohttp.FormData:
    body = aiohttp.FormData()
    body.add_field("file", data, filename=name, content_type=content_type)
    return body


def test_names_are_sanitised_and_types_come_from_bytes() -> None:
    assert sanitize_filename("../../etc/passwd") == "passwd"
    assert sanitize_filename("C:\\Users\\x\\report final.pdf") == "report final.pdf"
    cleaned = sanitize_filename("<script>al\x00ert('x')</script>.png")
    assert "<" not in cleaned and "/" not in cleaned and "\x00" not in cleaned
    assert cleaned.endswith(".png")
    assert sanitize_filename("...") == "file" and sanitize_filename(None) == "file"
    assert len(sanitize_filename("a" * 500 + ".pdf")) == 120
    assert sanitize_filename("a" * 500 + ".pdf").endswith(".pdf")
    assert sniff(png()) == "image/png" and sniff(PDF) == "application/pdf"
    assert sniff("héllo\n".encode()) == "text/plain"
    assert sniff(EXE) != "image/png" and sniff(b"\x00\x01\x02") is None


async def test_upload_and_send_image_and_file(stack) -> None:
    app = stack.app
    alice, bob, eve = await asyncio.gather(crm_user(app), crm_user(app), crm_user(app))
    conv = await project_chat(app, [alice, bob])
    cid = conv.conversation_id
    image = png()
    async with (
        api_for(app, stack.bridge_url, alice) as a,
        api_for(app, stack.bridge_url, bob) as b,
        api_for(app, stack.bridge_url, eve) as outsider,
    ):
        status, uploaded, _ = await a.post(
            "/api/chat/upload", data=form("../holiday <1>.png", image, "text/plain")
        )
        assert status == 201, uploaded
        attachment = uploaded["attachments"][0]
        assert attachment["mimetype"] == "image/png" and attachment["size"] == len(image)
        assert attachment["originalName"] == "holiday _1_.png"
        assert attachment["filename"].endswith(".png")
        # Absolute and signed for the uploader; also in the CRM upload's own fields.
        assert attachment["url"].startswith(f"{stack.bridge_url}/api/chat/media/localhost/")
        assert "sig=" in attachment["url"] and uploaded["fileUrl"] == attachment["url"]
        assert (uploaded["originalName"], uploaded["mimeType"]) == ("holiday _1_.png", "image/png")
        async with aiohttp.ClientSession() as session:
            # Before it is posted, only the uploader may fetch it.
            url = stack.bridge_url + media_path(attachment["url"])
            async with session.get(url, headers=b.headers()) as resp:
                assert resp.status == 404
            async with session.get(url, headers=a.headers()) as resp:
                assert resp.status == 200
        status, message, _ = await a.post(
            "/api/chat/send",
            {"conversationId": cid, "content": "", "type": "image", "attachments": [attachment]},
        )
        assert status == 201, message
        assert message["type"] == "image" and message["attachments"] == [attachment]

        # Element sees a normal image message.
        event = await app[MATRIX].get_event(conv.room_id, message["eventId"], as_user=bob.mxid)
        assert event["content"]["msgtype"] == "m.image"
        assert event["content"]["url"].startswith("mxc://localhost/")
        assert event["content"]["info"] == {"mimetype": "image/png", "size": len(image)}

        status, uploaded, _ = await a.post("/api/chat/upload", data=form("spec.pdf", PDF))
        assert status == 201
        pdf = uploaded["files"][0]
        status, message, _ = await a.post(
            "/api/chat/send",
            {"conversationId": cid, "content": "the spec", "type": "file", "attachments": [pdf]},
        )
        assert status == 201 and message["type"] == "file" and message["content"] == "the spec"
        event = await app[MATRIX].get_event(conv.room_id, message["eventId"], as_user=bob.mxid)
        assert event["content"]["msgtype"] == "m.file"
        assert event["content"]["filename"] == "spec.pdf"

        page = (await b.get(f"/api/chat/messages/{cid}"))[1]
        assert [m["type"] for m in page["messages"]] == ["image", "file"]
        bobs = page["messages"][0]["attachments"][0]["url"]
        assert media_path(bobs) == media_path(attachment["url"]) and bobs != attachment["url"]

        # Download: Bob's signed URL alone; the bearer header, the deprecated ?token=;
        # the bare path without any of them, never.
        async with aiohttp.ClientSession() as session:
            async with session.get(bobs) as resp:
                assert resp.status == 200 and await resp.read() == image
            url = stack.bridge_url + media_path(attachment["url"])
            async with session.get(url, headers=b.headers()) as resp:
                assert resp.status == 200 and await resp.read() == image
                assert resp.headers["Content-Type"] == "image/png"
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
            async with session.get(url, params={"token": b.bearer}) as resp:
                assert resp.status == 200
            async with session.get(url) as resp:
                assert resp.status == 401
                assert (await resp.json())["errcode"] == "M_MISSING_TOKEN"
            pdf_url = stack.bridge_url + media_path(pdf["url"])
            async with session.get(pdf_url, headers=b.headers()) as resp:
                assert resp.status == 200 and await resp.read() == PDF
                assert resp.headers["Content-Disposition"].startswith("attachment;")
            # Someone outside the conversation gets the same 404 as for a missing file.
            async with session.get(url, headers=outsider.headers()) as resp:
                assert resp.status == 404
                assert (await resp.json())["message"] == "File not found"
            # ...and cannot gain access by attaching the file to a message of their own.
            status, dm, _ = await outsider.post(
                "/api/chat/direct/create", {"userId": alice.crm_user_id}
            )
            assert status == 201, dm
            status, body, _ = await outsider.post(
                "/api/chat/send",
                {"conversationId": dm["_id"], "content": "mine now", "type": "image",
                 "attachments": [attachment]},
            )  # fmt: skip
            assert status == 400 and body["errcode"] == "M_INVALID_PARAM", body
            async with session.get(url, headers=outsider.headers()) as resp:
                assert resp.status == 404
            missing = stack.bridge_url + "/api/chat/media/localhost/NoSuchMedia"
            async with session.get(missing, headers=b.headers()) as resp:
                assert resp.status == 404


@pytest.mark.parametrize(
    ("make", "status", "errcode"),
    [
        (lambda: form("photo.png", EXE, "image/png"), 415, "M_UNSUPPORTED_TYPE"),
        (lambda: form("blob.bin", b"\x00\x01\x02\x03" * 10), 415, "M_UNSUPPORTED_TYPE"),
        (lambda: form("empty.png", b""), 400, "M_INVALID_PARAM"),
        (lambda: aiohttp.FormData({"other": "x"}, default_to_multipart=True), 400,
         "M_INVALID_PARAM"),
        (lambda: form("huge.pdf", PDF + b"0" * (10 * 1024 * 1024)), 413, "M_TOO_LARGE"),
    ],
)  # fmt: skip
async def test_bad_uploads_are_refused(stack, make, status, errcode) -> None:
    app = stack.app
    alice = await crm_user(app)
    uploads = media_and_sends(app)
    async with api_for(app, stack.bridge_url, alice) as a:
        got, error, _ = await a.post("/api/chat/upload", data=make())
        assert (got, error["errcode"]) == (status, errcode), error
        assert error["message"]
        got, error, _ = await a.post("/api/chat/upload", {"file": "json is not multipart"})
        assert got == 415
    assert media_and_sends(app) == uploads  # nothing reached the media repo


async def test_media_messages_from_element_have_their_types(stack) -> None:
    app = stack.app
    alice = await crm_user(app)
    conv = await project_chat(app, [alice])
    local = unique("el")
    element = await matrix_user(stack.synapse, local)
    try:
        await app[MATRIX].invite(conv.room_id, element.user_id)
        await element.join(conv.room_id)
        mxc = await app[MATRIX].upload(png(), "image/png", "cat.png")
        sent = await element.room_send(
            conv.room_id,
            "m.room.message",
            {"msgtype": "m.image", "body": "cat.png", "url": mxc,
             "info": {"mimetype": "image/png", "size": 70}},
        )  # fmt: skip
        doc = await element.room_send(
            conv.room_id,
            "m.room.message",
            {"msgtype": "m.file", "body": "notes.pdf", "url": mxc,
             "info": {"mimetype": "application/pdf", "size": 9}},
        )  # fmt: skip
        assert isinstance(sent, RoomSendResponse) and isinstance(doc, RoomSendResponse)
        await eventually(lambda: app[EVENT_INDEX].get(doc.event_id))
        async with api_for(app, stack.bridge_url, alice) as a:
            page = (await a.get(f"/api/chat/messages/{conv.conversation_id}"))[1]
            image, file = page["messages"]
            assert image["type"] == "image" and image["attachments"][0]["originalName"] == "cat.png"
            assert image["attachments"][0]["mimetype"] == "image/png"
            assert file["type"] == "file" and file["attachments"][0]["size"] == 9
            assert image["sender"]["_id"] == element.user_id
    finally:
        await element.close()
