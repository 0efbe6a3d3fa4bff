"""Search on a Synapse backed by PostgreSQL (the session's Synapse uses SQLite: see
tests/test_api_chat_routes.py). Synapse searches with tsvector there, FTS on SQLite."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.conftest import unique
from tests.fault_support import fault_stack
from tests.realtime_support import conversation_of

pytestmark = pytest.mark.integration


async def test_search_on_postgres_synapse(tmp_path: Path) -> None:
    async with fault_stack(tmp_path, synapse_db="postgres", redis="shared") as fs:
        alice, bob, eve = [await fs.directory.user(n) for n in ("PgA", "PgB", "PgE")]
        project = await fs.directory.project(unique("p"), "Pg search", [alice, bob], alice)
        cid = conversation_of(project)
        word = unique("walrus")
        async with aiohttp.ClientSession() as session:

            async def call(user: str, method: str, path: str, **kw):
                headers = {"Authorization": f"Bearer {fs.token(user)}"}
                async with session.request(method, fs.url + path, headers=headers, **kw) as r:
                    return r.status, await r.json()

            for i in range(3):
                status, _ = await call(
                    alice, "POST", "/api/chat/send",
                    json={"conversationId": cid, "content": f"the {word} {i} swims"},
                )  # fmt: skip
                assert status == 201
            await call(
                alice, "POST", "/api/chat/send", json={"conversationId": cid, "content": "x"}
            )
            status, page = await call(bob, "GET", "/api/chat/search", params={"q": word})
            assert status == 200, page
            assert [m["content"] for m in page["messages"]] == [
                f"the {word} {i} swims" for i in (2, 1, 0)
            ]
            status, first = await call(
                bob, "GET", "/api/chat/search", params={"q": word, "limit": "2"}
            )
            assert status == 200 and len(first["messages"]) == 2 and first["nextCursor"]
            status, rest = await call(
                bob, "GET", "/api/chat/search",
                params={"q": word, "limit": "2", "cursor": first["nextCursor"]},
            )  # fmt: skip
            assert status == 200 and [m["content"] for m in rest["messages"]] == [
                f"the {word} 0 swims"
            ]
            status, error = await call(
                eve, "GET", "/api/chat/search", params={"q": word, "conversationId": cid}
            )
            assert (status, error["errcode"]) == (404, "M_NOT_FOUND")
            status, none = await call(eve, "GET", "/api/chat/search", params={"q": word})
            assert status == 200 and none["messages"] == []
