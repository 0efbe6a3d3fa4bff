"""The seed frontend's own library, npm socket.io-client, against the bridge."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from bridge.context import USERS
from tests.api_support import api_for, token
from tests.conftest import unique
from tests.realtime_support import Directory, Recorder, conversation_of

NODE_DIR = Path(__file__).parent / "node"


async def read_until(proc: asyncio.subprocess.Process, event: str) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    assert proc.stdout is not None
    while True:
        raw = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert raw, f"node exited early: {lines}"
        line = json.loads(raw)
        assert line["event"] != "failed", [*lines, line]
        lines.append(line)
        if line["event"] == event:
            return lines


async def test_node_socket_io_client_basic_flow(stack) -> None:
    app, url = stack.app, stack.bridge_url
    directory = Directory(url, stack.config["admin_api.token"])
    alice_id = await directory.user("Alice Node")
    bob_id = await directory.user("Bob Python")
    project = await directory.project(unique("p"), "Node project", [alice_id, bob_id], alice_id)
    cid = conversation_of(project)
    alice, bob = await app[USERS].get(alice_id), await app[USERS].get(bob_id)
    b = await Recorder("bob").connect(url, token(app, bob))
    env = {
        **os.environ,
        "BRIDGE_URL": url,
        "TOKEN": token(app, alice),
        "CONVERSATION_ID": cid,
        "EXPECT_CONTENT": "from python",
    }
    proc = await asyncio.create_subprocess_exec(
        "node", str(NODE_DIR / "basic_flow.mjs"), env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        lines = await read_until(proc, "ready")
        by_event = {line["event"]: line for line in lines}
        assert by_event["joined_conversation"]["data"] == {"conversationId": cid}
        ack = by_event["ack"]["data"]
        assert ack["conversationId"] == cid and ack["sender"]["_id"] == alice_id
        assert by_event["new_message"]["data"]["_id"] == ack["_id"]
        # Python's client sees the Node client's message and typing.
        got = await b.wait("new_message", lambda m: m["_id"] == ack["_id"])
        assert got["content"].startswith("from node")
        await b.wait("user_typing", lambda t: t["userId"] == alice_id and t["isTyping"])
        # And the other way round: Bob types and sends over REST.
        await b.emit("typing", {"conversationId": cid, "isTyping": True})
        async with api_for(app, url, bob) as api:
            status, _, _ = await api.post(
                "/api/chat/send", {"conversationId": cid, "content": "from python"}
            )
            assert status == 201
        lines = await read_until(proc, "done")
        by_event = {line["event"]: line for line in lines}
        assert by_event["user_typing"]["data"]["userId"] == bob_id
        assert by_event["new_message"]["data"]["sender"]["_id"] == bob_id
        # The default client upgraded from long-polling to a websocket.
        assert by_event["done"]["transport"] == "websocket"
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await b.close()
