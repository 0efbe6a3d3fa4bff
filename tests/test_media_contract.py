"""Contract rows of the CRM's own messenger for files (../shared/contracts/crm-messenger.md):
the upload as ``/api/upload/single`` answers it, ``POST /chat/send`` for text, image, file and
voice in the page's exact shape, the ``new_message`` fields read through the npm
``socket.io-client``, ``GET /messages``' attachment fields, and ``POST /update-duration``."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest

from bridge.context import USERS
from tests.api_support import api_for, png, token
from tests.conftest import unique
from tests.realtime_support import Directory, conversation_of
from tests.test_media_voice import OGG, crm_attachment, form
from tests.test_realtime_node import NODE_DIR, read_until

pytestmark = pytest.mark.integration

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
ATTACHMENT_FIELDS = {"url", "filename", "originalName", "mimetype", "size", "duration"}
MESSAGE_FIELDS = {"_id", "conversationId", "sender", "content", "createdAt", "type",
                  "attachments", "readBy", "isPinned", "mentions", "replyTo"}  # fmt: skip


async def test_crm_messenger_sends_files_and_reads_them_back(stack) -> None:
    app, url = stack.app, stack.bridge_url
    directory = Directory(url, stack.config["admin_api.token"])
    alice_id = await directory.user("Alice Files")
    bob_id = await directory.user("Bob Files")
    project = await directory.project(unique("p"), "Files", [alice_id, bob_id], alice_id)
    cid = conversation_of(project)
    alice, bob = await app[USERS].get(alice_id), await app[USERS].get(bob_id)
    env = {**os.environ, "BRIDGE_URL": url, "TOKEN": token(app, bob), "CONVERSATION_ID": cid,
           "EXPECT": "4"}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        "node", str(NODE_DIR / "crm_media.mjs"), env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        await read_until(proc, "ready")
        async with api_for(app, url, alice) as a, api_for(app, url, bob) as b:
            # POST /upload/single, routed to the bridge: fileUrl, originalName, mimeType.
            uploads = {}
            for kind, name, data, claimed in (
                ("image", "chart.png", png(8, 8), "image/png"),
                ("file", "spec.pdf", PDF, "application/pdf"),
                ("voice", "voice.ogg", OGG, "audio/ogg"),
            ):
                status, answer, _ = await a.post("/api/chat/upload", data=form(name, data, claimed))
                assert status == 201, answer
                assert answer["originalName"] == name and answer["mimeType"] == claimed
                assert answer["fileUrl"].startswith(f"{url}/api/chat/media/")
                assert answer["size"] == len(data)
                uploads[kind] = (answer, data)
            sent = {}
            for kind in ("text", "image", "file", "voice"):
                attachments = [crm_attachment(uploads[kind][0])] if kind in uploads else []
                body = {"conversationId": cid, "content": f"a {kind}" if kind == "text" else "",
                        "attachments": attachments, "type": kind, "mentions": [],
                        "replyTo": None}  # fmt: skip
                status, message, _ = await a.post("/api/chat/send", body)
                assert status == 201, (kind, message)
                sent[kind] = message

            # new_message through the npm client, each field the page reads.
            lines = await read_until(proc, "messages")
            pushed = {m["_id"]: m for m in lines[-1]["data"]}
            for kind, message in sent.items():
                got = pushed[message["_id"]]
                assert set(got) >= MESSAGE_FIELDS, (kind, set(got))
                assert got["conversationId"] == cid and got["sender"]["_id"] == alice_id
                assert got["type"] == kind and got["createdAt"] and got["isPinned"] is False
                assert got["mentions"] == [] and got["replyTo"] is None
                assert isinstance(got["readBy"], list)
                for attachment in got["attachments"]:
                    assert set(attachment) == ATTACHMENT_FIELDS
                    # Signed for Bob, the socket's user.
                    assert f"u={bob_id}&" in attachment["url"]
                if kind in uploads:
                    answer, data = uploads[kind]
                    (attachment,) = got["attachments"]
                    assert attachment["originalName"] == answer["originalName"]
                    assert attachment["mimetype"] == answer["mimeType"]
                    assert attachment["size"] == len(data)
            assert pushed[sent["text"]["_id"]]["content"] == "a text"
            # Each URL loads as a bare <img src> / <audio src> would fetch it.
            fetched = lines[-1]["fetched"]
            assert len(fetched) == 3 and all(f["status"] == 200 for f in fetched), fetched
            assert sorted(f["size"] for f in fetched) == sorted(len(d) for _, d in uploads.values())

            # POST /update-duration {messageId, attachmentIndex, duration}, then GET /messages.
            voice_id = sent["voice"]["_id"]
            status, _, _ = await a.post(
                "/api/chat/update-duration",
                {"messageId": voice_id, "attachmentIndex": 0, "duration": 2.75},
            )
            assert status == 200
            status, page, _ = await b.get(f"/api/chat/messages/{cid}?page=1&limit=50")
            assert status == 200 and page["hasMore"] is False
            by_id = {m["_id"]: m for m in page["messages"]}
            for kind, message in sent.items():
                read = by_id[message["_id"]]
                assert read["type"] == kind
                for attachment in read["attachments"]:
                    assert set(attachment) == ATTACHMENT_FIELDS
            assert by_id[voice_id]["attachments"][0]["duration"] == 2.75
            assert by_id[sent["image"]["_id"]]["attachments"][0]["duration"] is None
            image_url = by_id[sent["image"]["_id"]]["attachments"][0]["url"]
            async with aiohttp.ClientSession() as session, session.get(image_url) as resp:
                assert resp.status == 200 and await resp.read() == uploads["image"][1]
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
