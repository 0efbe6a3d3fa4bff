"""``python -m bridge export``: a real room's history, every message once, in order, as the
API's message objects."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nio import RoomSendResponse

from bridge.config import Config
from bridge.context import EVENT_INDEX, MATRIX
from tests.api_support import Api, api_for, crm_user, png, project_chat, unsigned
from tests.conftest import Stack, unique
from tests.helpers import eventually, matrix_user

pytestmark = pytest.mark.integration


async def run_export(config: Path, *args: str) -> tuple[int, str, str]:
    """The real CLI as a child process (the session bridge in this process keeps serving)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "export", *args, "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def api_history(api: Api, conversation_id: str) -> list[dict[str, Any]]:
    """The whole history through the REST API, oldest first (before= cursors)."""
    pages: list[list[dict[str, Any]]] = []
    query = "limit=100"
    for _ in range(20):
        status, body, _ = await api.get(f"/api/chat/messages/{conversation_id}?{query}")
        assert status == 200, body
        pages.append(body["messages"])
        if not body["hasMore"]:
            break
        query = f"limit=100&before={body['nextCursor']}"
    return [m for page in reversed(pages) for m in page]


def saved_config(stack: Stack, tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    Config(dict(stack.config.data)).save(path)
    return path


async def test_export_round_trip_of_a_project_room(stack: Stack, tmp_path: Path) -> None:
    app = stack.app
    alice, bob = await asyncio.gather(crm_user(app, "Alice Export"), crm_user(app, "Bob Export"))
    # A CRM user on Element (a linked Matrix account): the project room keeps it as a member,
    # and its messages carry its CRM identity.
    local = unique("export")
    carol = await crm_user(app, "Carol on Element", matrix_id=f"@{local}:localhost")
    conv = await project_chat(app, [alice, bob, carol])
    cid = conv.conversation_id
    element = await matrix_user(stack.synapse, local)
    await app[MATRIX].invite(conv.room_id, element.user_id)
    await element.join(conv.room_id)
    # (sender _id, content) in the order sent: REST and Element interleaved, then a page
    # boundary's worth (more than 100) from Element.
    expected: list[tuple[str, str]] = []
    try:
        async with (
            api_for(app, stack.bridge_url, alice) as a,
            api_for(app, stack.bridge_url, bob) as b,
        ):
            status, body, _ = await a.post(
                "/api/chat/send", {"conversationId": cid, "content": "hi"}
            )
            assert status == 201, body
            expected.append((alice.crm_user_id, "hi"))
            form = aiohttp.FormData()
            form.add_field("file", png(), filename="plan.png", content_type="image/png")
            status, uploaded, _ = await b.post("/api/chat/upload", data=form)
            assert status == 201, uploaded
            attachment = uploaded["attachments"][0]
            status, body, _ = await b.post(
                "/api/chat/send",
                {"conversationId": cid, "content": "the plan", "type": "image",
                 "attachments": [attachment]},
            )  # fmt: skip
            assert status == 201, body
            expected.append((bob.crm_user_id, "the plan"))
            for n in range(102):
                resp = await element.room_send(
                    conv.room_id, "m.room.message", {"msgtype": "m.text", "body": f"el {n}"}
                )
                assert isinstance(resp, RoomSendResponse), resp
                expected.append((carol.crm_user_id, f"el {n}"))
                if n == 0:
                    status, body, _ = await a.post(
                        "/api/chat/send", {"conversationId": cid, "content": "between"}
                    )
                    assert status == 201, body
                    expected.append((alice.crm_user_id, "between"))

            async def indexed() -> bool:
                return await app[EVENT_INDEX].count(conv.room_id) >= len(expected)

            await eventually(indexed, timeout=30)
            through_api = await api_history(a, cid)
    finally:
        await element.close()

    config = saved_config(stack, tmp_path)
    out = tmp_path / "history.jsonl"
    code, stdout, stderr = await run_export(config, cid, "--format", "jsonl", "-o", str(out))
    assert code == 0, stderr
    assert stdout == ""
    assert f"Exported {len(expected)} message(s)" in stderr
    assert "exporting" in stderr  # the progress bar, on stderr
    exported = jsonl(out.read_text("utf-8"))

    assert [(m["sender"]["_id"], m["content"]) for m in exported] == expected
    assert len({m["_id"] for m in exported}) == len(expected)
    assert all(m["conversationId"] == cid for m in exported)
    image = exported[1]
    # The export keeps the bare media paths (a signed URL would expire); the API signs them.
    assert image["type"] == "image" and image["attachments"] == [unsigned(attachment)]
    assert image["sender"] == {
        "_id": bob.crm_user_id, "name": "Bob Export", "email": bob.email, "avatar": None,
        "firstName": "Bob", "lastName": "Export", "profileImage": None, "position": None,
    }  # fmt: skip
    assert exported[2]["sender"]["name"] == "Carol on Element"
    # The same objects the API serves, field for field.
    assert exported == unsigned(through_api)

    # A project id names its project room; without -o the lines go to stdout.
    code, stdout, stderr = await run_export(config, conv.project_id or "")
    assert code == 0, stderr
    assert jsonl(stdout) == exported


async def test_export_of_a_direct_conversation_and_unknown_ids(
    stack: Stack, tmp_path: Path
) -> None:
    app = stack.app
    alice, bob = await asyncio.gather(crm_user(app), crm_user(app))
    async with api_for(app, stack.bridge_url, alice) as a:
        status, dm, _ = await a.post("/api/chat/direct/create", {"userId": bob.crm_user_id})
        assert status in (200, 201), dm
        for text in ("one", "two"):
            status, body, _ = await a.post(
                "/api/chat/send", {"conversationId": dm["_id"], "content": text}
            )
            assert status == 201, body
    config = saved_config(stack, tmp_path)
    # The bot is not in a DM: a joined puppet reads it.
    code, stdout, stderr = await run_export(config, dm["_id"])
    assert code == 0, stderr
    assert [(m["sender"]["_id"], m["content"]) for m in jsonl(stdout)] == [
        (alice.crm_user_id, "one"),
        (alice.crm_user_id, "two"),
    ]
    # An id may begin with "-" (room ids can): it is an id, not an unknown option.
    for unknown in ("no-such-thing", "-no-such-thing"):
        code, stdout, stderr = await run_export(config, unknown)
        assert code == 2 and stdout == ""
        assert f"No conversation or project with id {unknown!r}" in stderr, stderr
