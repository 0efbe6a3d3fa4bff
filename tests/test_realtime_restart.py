"""Kill the bridge (the process receiving transactions) during a burst, restart it: nothing
is lost, and a client that reconnects with its cursor ends with every message exactly once.

This test runs its own Synapse, because killing the session's bridge would break the other
tests: a registration points at exactly one appservice URL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from bridge.api.auth import JwtVerifier
from bridge.config import Config
from bridge.devstack.synapse import SynapseProcess, free_port
from bridge.ids import IdMapper
from tests.conftest import (
    POSTGRES_DSN,
    REDIS_URL,
    create_schema,
    drop_schema,
    generate_config,
    postgres_args,
    unique,
)
from tests.helpers import eventually
from tests.realtime_support import BridgeProcess, Directory, Recorder, conversation_of

BEFORE_KILL, DURING_DOWNTIME, AFTER_RESTART = 12, 6, 12


@pytest.fixture
async def killable(tmp_path: Path):
    """A Synapse of its own and a bridge child process that receives its transactions."""
    synapse_port, bridge_port = free_port(), free_port()
    config_path, registration = generate_config(
        tmp_path / "bridge",
        **{
            "homeserver.address": f"http://127.0.0.1:{synapse_port}",
            "appservice.address": f"http://127.0.0.1:{bridge_port}",
            "appservice.port": bridge_port,
            "realtime.offline_grace": 1,
            "api.rate_limit.send_requests": 1000,
            "logging.loggers.bridge.level": "WARNING",
        },
    )
    schema = await create_schema()
    config = Config.load(config_path, environ={})
    config.set("database.url", POSTGRES_DSN)
    config.set("database.args", postgres_args(schema))
    config.set("redis.url", REDIS_URL)
    synapse = SynapseProcess(
        tmp_path / "synapse", port=synapse_port, registration_files=[registration]
    )
    synapse.start()
    bridge = BridgeProcess(config, tmp_path, "killable")
    try:
        await synapse.wait_ready()
        await bridge.start()
        yield synapse, bridge
    finally:
        bridge.stop()
        synapse.stop()
        await drop_schema(schema)


async def send(
    session: aiohttp.ClientSession, url: str, bearer: str, cid: str, content: str
) -> dict[str, Any] | None:
    """POST /send with clientMessageId; None when the bridge is unreachable (retry later)."""
    body = {"conversationId": cid, "content": content, "clientMessageId": content}
    try:
        async with session.post(
            url + "/api/chat/send", json=body, headers={"Authorization": f"Bearer {bearer}"}
        ) as resp:
            if resp.status >= 500:
                return None
            assert resp.status == 201, await resp.text()
            return await resp.json()
    except (TimeoutError, aiohttp.ClientConnectionError):
        return None


async def catch_up(
    session: aiohttp.ClientSession, url: str, bearer: str, cid: str, cursor: str | None
) -> list[dict[str, Any]]:
    """The documented catch-up: GET /messages/:id?after=<cursor> until hasMore is false
    (without a cursor yet: the newest page)."""
    missed: list[dict[str, Any]] = []
    while True:
        query = {"after": cursor, "limit": 10} if cursor else {"limit": 100}
        async with session.get(
            URL(f"{url}/api/chat/messages/{cid}").with_query(query),
            headers={"Authorization": f"Bearer {bearer}"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            page = await resp.json()
        missed.extend(page["messages"])
        if not page["hasMore"] or not cursor:
            return missed
        cursor = page["nextCursor"]


async def test_kill_during_burst_loses_nothing(killable) -> None:
    synapse, bridge = killable
    url, config = bridge.url, bridge.config
    directory = Directory(url, config["admin_api.token"])
    alice_id, bob_id = await directory.user("Alice Burst"), await directory.user("Bob Reader")
    project = await directory.project(unique("p"), "Burst", [alice_id, bob_id], alice_id)
    cid = conversation_of(project)
    verifier = JwtVerifier.from_config(config)
    alice, bob = verifier.mint(alice_id), verifier.mint(bob_id)
    as_token = config["appservice.as_token"]
    alice_mxid = IdMapper.from_config(config).puppet_mxid(alice_id)
    expected = [f"burst {i:02d}" for i in range(BEFORE_KILL + DURING_DOWNTIME + AFTER_RESTART)]

    first = await Recorder("bob").connect(url, bob)
    second = None
    async with aiohttp.ClientSession() as session:
        try:
            # The burst: concurrent sends; the bridge is killed in the middle of it.
            burst = [
                asyncio.create_task(send(session, url, alice, cid, c))
                for c in expected[:BEFORE_KILL]
            ]
            await eventually(lambda: _true(len(first.of("new_message")) >= 3), interval=0.02)
            bridge.kill()
            results = await asyncio.gather(*burst)
            live_before = list(first.of("new_message"))
            assert live_before, "no message arrived before the kill"
            cursor = live_before[-1]["cursor"]

            # While it is down, Alice's puppet keeps talking straight to Synapse.
            room_id = project["roomId"]
            for i, content in enumerate(expected[BEFORE_KILL : BEFORE_KILL + DURING_DOWNTIME]):
                async with session.put(
                    f"{synapse.url}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/down{i}",
                    params={"user_id": alice_mxid},
                    json={"msgtype": "m.text", "body": content},
                    headers={"Authorization": f"Bearer {as_token}"},
                ) as resp:
                    assert resp.status == 200, await resp.text()

            # Restart; unanswered sends are retried with the same clientMessageId.
            await bridge.start()
            for content, result in zip(expected[:BEFORE_KILL], results, strict=True):
                if result is None:
                    assert await send(session, url, alice, cid, content) is not None

            # Bob reconnects: buffer live events, fetch after the cursor (the one of the last
            # new_message he got), merge by _id, as docs/realtime.md tells frontends to.
            second = await Recorder("bob again").connect(url, bob)
            fetched = await catch_up(session, url, bob, cid, cursor)
            for content in expected[BEFORE_KILL + DURING_DOWNTIME :]:
                assert await send(session, url, alice, cid, content) is not None

            def timeline() -> list[dict[str, Any]]:
                merged: dict[str, dict[str, Any]] = {}
                for message in live_before + fetched + second.of("new_message"):
                    merged.setdefault(message["_id"], message)
                return list(merged.values())

            async def complete() -> bool:
                return len(timeline()) >= len(expected)

            try:
                await eventually(complete, timeout=30)
            except AssertionError:
                have = {m["content"] for m in timeline()}
                raise AssertionError(
                    f"missing {sorted(set(expected) - have)}; before={len(live_before)} "
                    f"fetched={[m['content'] for m in fetched]} "
                    f"second={[m['content'] for m in second.of('new_message')]}"
                ) from None
            got = [m["content"] for m in timeline()]
            # Every message exactly once after merging by _id, none missing.
            assert sorted(got) == expected, got
            for sock in (first, second):
                ids = [m["_id"] for m in sock.of("new_message")]
                assert len(ids) == len(set(ids)), sock.name
            # Synapse holds each message once: retries after the crash made no duplicates.
            history = await catch_up(session, url, alice, cid, live_before[0]["_id"])
            bodies = [live_before[0]["content"]] + [m["content"] for m in history]
            assert sorted(bodies) == sorted(set(bodies)), bodies

            # The bridge's index has every message too (redelivered transactions): Bob's
            # unread count, served from it, counts them all.
            async def unread() -> int:
                async with session.get(
                    f"{url}/api/chat/conversations", headers={"Authorization": f"Bearer {bob}"}
                ) as resp:
                    listed = await resp.json()
                return next(c["unreadCount"] for c in listed if c["_id"] == cid)

            await eventually(lambda: _is(unread(), len(expected)), timeout=20)
        finally:
            await first.close()
            if second is not None:
                await second.close()


async def _true(value: bool) -> bool:
    return value


async def _is(value, expected: object) -> bool:
    return await value == expected
