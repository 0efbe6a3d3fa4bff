"""History pages of edited messages, on a homeserver with MSC3874 and on one without.

The bridge's /messages filter asks the homeserver to leave edits and thread replies out
(``org.matrix.msc3874.not_rel_types``). Synapse honours it only with
``experimental_features: msc3874_enabled``; without, it returns them and the bridge drops
them as it reads. Either way a client must get the same pages: every message once, in
order, with its latest edit, its quote and its thread count, and ``hasMore`` false only on
the last page. The homeserver side is checked as well, so each run is known to have taken
its path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.api.history import _FILTER
from tests.api_support import Api
from tests.conftest import unique
from tests.fault_support import FaultStack, fault_stack
from tests.realtime_support import conversation_of

pytestmark = pytest.mark.integration

MESSAGES = 7
PAGE = 3


async def sent(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    status, message, _ = await api.post("/api/chat/send", body)
    assert status == 201, message
    return message


async def edits_from_homeserver(fs: FaultStack, room_id: str, crm_user_id: str) -> int:
    """Edits in the homeserver's answer to the bridge's own /messages filter."""
    query = {"dir": "b", "limit": "100", "filter": _FILTER}
    path = f"rooms/{room_id}/messages"
    status, answer = await fs.as_puppet("GET", path, crm_user_id, params=query)
    assert status == 200, answer
    return sum(
        (e.get("content") or {}).get("m.relates_to", {}).get("rel_type") == "m.replace"
        for e in answer["chunk"]
    )


async def walk(api: Api, cid: str, by: str) -> list[dict[str, Any]]:
    """Every page back from the newest (``by`` "page" numbers or "before" cursors), oldest
    message first; each page but the last says hasMore."""
    pages: list[list[dict[str, Any]]] = []
    query: dict[str, str] = {"limit": str(PAGE)}
    while True:
        status, page, _ = await api.get(f"/api/chat/messages/{cid}", params=query)
        assert status == 200, page
        pages.insert(0, page["messages"])
        if not page["hasMore"]:
            return [m for p in pages for m in p]
        assert len(page["messages"]) == PAGE, page
        if by == "page":
            query["page"] = str(len(pages) + 1)
        else:
            query["before"] = page["nextCursor"]
        assert len(pages) <= MESSAGES, "the walk does not end"


@pytest.mark.parametrize("msc3874", [True, False], ids=["msc3874", "without-msc3874"])
async def test_pages_of_edited_messages_are_the_same_with_or_without_msc3874(
    tmp_path: Path, msc3874: bool
) -> None:
    synapse_config = None if msc3874 else {"experimental_features": {"msc3874_enabled": False}}
    async with fault_stack(tmp_path, redis=None, synapse_config=synapse_config) as fs:
        alice_id = await fs.directory.user("Alice Editor")
        bob_id = await fs.directory.user("Bob Reader")
        project = await fs.directory.project(unique("p"), "Edits", [alice_id, bob_id], alice_id)
        room_id, cid = project["roomId"], conversation_of(project)
        async with aiohttp.ClientSession() as session:
            alice = Api(session, fs.url, fs.token(alice_id))
            bob = Api(session, fs.url, fs.token(bob_id))
            ids = [
                (await sent(alice, {"conversationId": cid, "content": f"m{i}"}))["_id"]
                for i in range(MESSAGES)
            ]
            # Every other message edited twice: the later edit wins.
            for i in range(0, MESSAGES, 2):
                for n in (1, 2):
                    body = {"messageId": ids[i], "content": f"m{i} edit {n}"}
                    status, edited, _ = await alice.post("/api/chat/edit-message", body)
                    assert status == 200, edited
            reply = {"conversationId": cid, "content": "reply", "replyTo": ids[2]}
            await sent(bob, reply)
            await sent(bob, {"conversationId": cid, "content": "in thread", "threadId": ids[4]})

            edits = 2 * len(range(0, MESSAGES, 2))
            assert await edits_from_homeserver(fs, room_id, bob_id) == (0 if msc3874 else edits)
            want = [f"m{i} edit 2" if i % 2 == 0 else f"m{i}" for i in range(MESSAGES)]
            want.append("reply")
            for by in ("page", "before"):
                messages = await walk(bob, cid, by)
                assert [m["content"] for m in messages] == want, (by, messages)
                assert [m["edited"] for m in messages] == [i % 2 == 0 for i in range(MESSAGES)] + [
                    False
                ]
                shown = {m["_id"]: m for m in messages}
                assert shown[ids[4]]["threadCount"] == 1
                quote = messages[-1]["replyTo"]
                assert quote["_id"] == ids[2] and quote["content"] == "m2 edit 2", quote
                print(json.dumps({"msc3874": msc3874, "by": by, "messages": len(messages)}))
