"""Scale-out correctness: one appservice process (the session's bridge, which receives the
transactions) and two facade processes (``python -m bridge`` children) on the same
PostgreSQL schema, Redis and Synapse.

* admin calls made on different processes wait for one engine lock (PostgreSQL advisory);
* simultaneous DM requests on two processes give one room;
* a redaction leaves ``lastMessage`` and the body caches of every process, and a deleted
  message leaves another facade's pinned list within 1 s, even when the first publish of
  its invalidation failed (then within the bus's retry);
* a sync job's status is read through either process (test_crm_sync.py);
* ``GET /api/chat/conversations`` on a facade process makes no homeserver call (counted
  by the process itself, ``/metrics``);
* ``GET /api/users`` with 1,500 users the presence board has never seen asks Synapse for
  no presence inside the request; the background refresh then asks at its bounded rate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from bridge.chat.invalidation import BUS
from bridge.context import (
    CONVERSATIONS,
    DATABASE,
    EVENT_INDEX,
    HOMESERVER,
    IDS,
    MATRIX,
    PROJECTS,
    USERS,
)
from bridge.crm.engine_lock import advisory_key, deployment_of
from bridge.db.crm_user import CrmUser
from bridge.db.unread import UNREAD_CAP
from bridge.devstack.synapse import free_port
from bridge.matrix.homeserver import q
from bridge.presence_board import RATE
from tests.api_support import api_for, crm_user, project_chat
from tests.conftest import POSTGRES_DSN, unique
from tests.helpers import eventually
from tests.realtime_support import BridgeProcess, Directory, conversation_of, facade_config
from tests.relations_support import person, users

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def facade_processes(
    stack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[list[BridgeProcess]]:
    root: Path = tmp_path_factory.mktemp("scale-roles")
    processes = []
    for name in ("facade-b", "facade-c"):
        config = facade_config(stack.config)
        config.set("metrics.enabled", True)
        config.set("metrics.listen_port", free_port())
        processes.append(BridgeProcess(config, root, name))
    try:
        await asyncio.gather(*(p.start() for p in processes))
        yield processes
    finally:
        for p in processes:
            p.stop()


@pytest.fixture(scope="module")
def facades(facade_processes: list[BridgeProcess]) -> list[str]:
    return [p.url for p in facade_processes]


def metrics_url(process: BridgeProcess) -> str:
    return f"http://127.0.0.1:{process.config['metrics.listen_port']}/metrics"


async def homeserver_calls(process: BridgeProcess) -> dict[str, int]:
    """The process's homeserver requests by endpoint (answered or failed), from its
    Prometheus metrics; its readiness probes (``/versions``) are left out."""
    async with aiohttp.ClientSession() as session, session.get(metrics_url(process)) as resp:
        assert resp.status == 200
        text = await resp.text()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        answered = line.startswith("bridge_homeserver_request_duration_seconds_count{")
        failed = line.startswith("bridge_homeserver_errors_total{") and (
            'reason="timeout"' in line or 'reason="connection"' in line
        )
        if answered or failed:
            labels, value = line.rsplit(" ", 1)
            if "/versions" not in labels:
                counts[labels] = int(float(value))
    return counts


async def conversations(app, url: str, user) -> list[dict[str, Any]]:
    async with api_for(app, url, user) as api:
        status, listed, _ = await api.get("/api/chat/conversations")
    assert status == 200, listed
    return listed


def last_content(listed: list[dict[str, Any]], conversation_id: str) -> str | None:
    entry = next(c for c in listed if c["_id"] == conversation_id)
    return entry["lastMessage"]["content"] if entry["lastMessage"] else None


async def test_admin_calls_on_two_processes_wait_for_one_engine_lock(stack, facades) -> None:
    app, (url_b, url_c) = stack.app, facades
    token = stack.config["admin_api.token"]
    on_b, on_c = Directory(url_b, token), Directory(url_c, token)
    alice = await on_b.user("Alice Lock")
    # Whoever holds the deployment's advisory lock holds the engine of every process.
    key = advisory_key(deployment_of(stack.config))
    holder = await asyncpg.connect(POSTGRES_DSN)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", key)
        project_id = unique("p")
        calls = [
            asyncio.create_task(on_b.project(project_id, "Raced", [alice], alice)),
            asyncio.create_task(on_c.project(project_id, "Raced", [alice], alice)),
        ]
        done, _ = await asyncio.wait(calls, timeout=1.5)
        assert not done, "an admin call ran while another process held the engine"
        await holder.execute("SELECT pg_advisory_unlock($1)", key)
        results = await asyncio.wait_for(asyncio.gather(*calls), timeout=60)
    finally:
        await holder.close()
    # Serialised, the second call found the first one's room: one room, no error.
    assert results[0]["roomId"] and results[0]["roomId"] == results[1]["roomId"]
    project = await app[PROJECTS].get(project_id)
    assert project is not None and project.room_id == results[0]["roomId"]
    joined = await app[MATRIX].joined_rooms(app[IDS].puppet_mxid(alice))
    assert joined == [project.room_id]


async def test_two_conflicting_admin_calls_on_two_processes_apply_one_after_the_other(
    stack, facades
) -> None:
    app, (url_b, url_c) = stack.app, facades
    token = stack.config["admin_api.token"]
    on_b, on_c = Directory(url_b, token), Directory(url_c, token)
    alice, bob = await on_b.user("Alice Serial"), await on_c.user("Bob Serial")
    for _ in range(3):
        project_id = unique("p")
        first, second = await asyncio.gather(
            on_b.project(project_id, "Both", [alice, bob], alice),
            on_c.project(project_id, "Both", [alice, bob], alice),
        )
        assert first["roomId"] == second["roomId"]
        members = await app[MATRIX].joined_members(first["roomId"])
        assert set(members) == {
            app[IDS].bot_mxid, app[IDS].puppet_mxid(alice), app[IDS].puppet_mxid(bob)
        }  # fmt: skip


async def test_a_dm_race_on_two_processes_gives_one_room(stack, facades) -> None:
    app, (url_b, url_c) = stack.app, facades
    for _ in range(3):
        alice, bob = await asyncio.gather(crm_user(app, "Alice DM"), crm_user(app, "Bob DM"))
        async with api_for(app, url_b, alice) as a, api_for(app, url_c, bob) as b:
            answers = await asyncio.gather(
                a.post("/api/chat/direct/create", {"userId": bob.crm_user_id}),
                b.post("/api/chat/direct/create", {"userId": alice.crm_user_id}),
                a.post("/api/chat/direct/create", {"userId": bob.crm_user_id}),
            )
        # Exactly one request created it; the others found it.
        assert sorted(status for status, _, _ in answers) == [200, 200, 201], answers
        ids = {body["_id"] for _, body, _ in answers}
        assert len(ids) == 1, answers
        # One room in Matrix: neither puppet is in (or invited to) any other.
        rooms_a = await app[MATRIX].joined_rooms(alice.mxid)
        rooms_b = await app[MATRIX].joined_rooms(bob.mxid)
        assert rooms_a == rooms_b == [answers[0][1]["matrixRoomId"]]
        # The claim is gone once the conversation exists.
        claims = await app[DATABASE].fetchval("SELECT COUNT(*) FROM direct_claim")
        assert claims == 0


async def test_a_redaction_leaves_last_message_on_every_process(stack, facades) -> None:
    app = stack.app
    urls = [stack.bridge_url, *facades]
    alice, bob = await asyncio.gather(crm_user(app, "Alice R"), crm_user(app, "Bob R"))
    conversation = await project_chat(app, [alice, bob])
    cid = conversation.conversation_id
    retry_key = unique("cm")
    async with api_for(app, facades[0], alice) as a:
        status, sent, _ = await a.post(
            "/api/chat/send",
            {
                "conversationId": cid,
                "content": "to be deleted",
                "clientMessageId": retry_key,
            },
        )
        assert status == 201, sent

        async def everywhere(expected: str | None) -> bool:
            for url in urls:
                if last_content(await conversations(app, url, bob), cid) != expected:
                    return False
            return True

        await eventually(lambda: everywhere("to be deleted"), timeout=15)
        # The sending facade holds the body in its memory: a replay comes from there.
        status, replay, _ = await a.post(
            "/api/chat/send",
            {
                "conversationId": cid,
                "content": "to be deleted",
                "clientMessageId": retry_key,
            },
        )
        assert status == 201 and replay["content"] == "to be deleted"

        # Deleted in Matrix (as Element would): the intake process sees the redaction.
        path = (
            f"/_matrix/client/v3/rooms/{q(conversation.room_id)}/redact/"
            f"{q(sent['eventId'])}/{unique('txn')}"
        )
        await app[HOMESERVER].put(path, {"reason": "test"}, as_user=alice.mxid)
        await eventually(lambda: everywhere(None), timeout=15)

        async def replay_has_no_body() -> bool:
            status, again, _ = await a.post(
                "/api/chat/send",
                {"conversationId": cid, "content": "x", "clientMessageId": retry_key},
            )
            return status == 201 and again["content"] == ""

        # The facade's body cache was invalidated through Redis, not only the index.
        await eventually(replay_has_no_body, timeout=10, interval=0.5)


async def _pinned_contents(app, url: str, user, cid: str) -> list[str]:
    async with api_for(app, url, user) as api:
        status, listed, _ = await api.get(f"/api/chat/pinned-messages/{cid}")
    assert status == 200, listed
    return [m["content"] for m in listed["data"]]


async def _redact(app, room_id: str, event_id: str, mxid: str) -> float:
    """Delete as Element would (the intake process sees it); when Synapse accepted it."""
    path = f"/_matrix/client/v3/rooms/{q(room_id)}/redact/{q(event_id)}/{unique('txn')}"
    await app[HOMESERVER].put(path, {"reason": "test"}, as_user=mxid)
    return asyncio.get_running_loop().time()


async def _gone_after(app, url: str, user, cid: str, content: str, since: float) -> float:
    """Seconds from ``since`` until ``content`` left the pinned list read through ``url``."""
    loop = asyncio.get_running_loop()
    while content in await _pinned_contents(app, url, user, cid):
        assert loop.time() - since < 15, f"{content!r} still pinned on {url}"
        await asyncio.sleep(0.05)
    return loop.time() - since


async def _ready(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url + "/health/ready") as resp:
        return await resp.json()


async def test_a_deleted_message_leaves_another_facades_pinned_list(stack, facades) -> None:
    app = stack.app
    directory = Directory(stack.bridge_url, stack.config["admin_api.token"])
    # Pinning takes a manager or an admin (the room's power levels).
    alice_id, bob_id = await asyncio.gather(
        person(directory, "Alice Pin", "admin"), person(directory, "Bob Pin", "employee")
    )
    project = await directory.project(unique("p"), "Pins", [alice_id, bob_id], alice_id)
    alice, bob = await users(app, alice_id, bob_id)
    cid, room_id = conversation_of(project), project["roomId"]
    sent = {}
    async with api_for(app, facades[0], alice) as a:
        for content in ("pinned then deleted", "pinned, deleted while Redis fails"):
            status, sent[content], _ = await a.post(
                "/api/chat/send", {"conversationId": cid, "content": content}
            )
            assert status == 201, sent[content]
            status, body, _ = await a.post(
                "/api/chat/pin-message", {"messageId": sent[content]["_id"]}
            )
            assert status == 200, body

    async def listed_on_c() -> bool:
        return set(sent) <= set(await _pinned_contents(app, facades[1], bob, cid))

    # Facade C reads both bodies once, so they sit in its body cache.
    await eventually(listed_on_c, timeout=15)

    # 1. The intake process publishes the invalidation: C drops the message within 1 s.
    content = "pinned then deleted"
    since = await _redact(app, room_id, sent[content]["eventId"], alice.mxid)
    took = await _gone_after(app, facades[1], bob, cid, content, since)
    print(f"deleted message left facade C's pinned list after {took:.2f} s")
    assert took <= 1.0, took

    # 2. The intake process cannot publish (its Redis client points nowhere): it says it is
    # degraded, keeps the id, and publishes it once its link is back.
    bus = app[BUS]
    working, broken = (
        bus.redis,
        Redis.from_url(
            f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5, socket_connect_timeout=0.5
        ),
    )
    content = "pinned, deleted while Redis fails"
    bus.redis = broken
    try:
        await _redact(app, room_id, sent[content]["eventId"], alice.mxid)
        await eventually(lambda: _true(bus.degraded), timeout=15)
        assert (await _ready(stack.bridge_url))["status"] == "degraded"
        # The intake process bypasses its own cache meanwhile: it serves no deleted text.
        assert content not in await _pinned_contents(app, stack.bridge_url, bob, cid)
        # Facade C never heard: it still serves the text from its cache (the gap closed below).
        assert content in await _pinned_contents(app, facades[1], bob, cid)
    finally:
        bus.redis = working
        back = asyncio.get_running_loop().time()
        await broken.aclose()
    took = await _gone_after(app, facades[1], bob, cid, content, back)
    print(f"after a failed publish, gone from facade C {took:.2f} s after Redis was back")
    # The bus retries its subscription at most every 2 s and then sends what it kept.
    assert took <= 3.5, took
    await eventually(lambda: _true(not bus.degraded), timeout=5)
    assert (await _ready(stack.bridge_url))["status"] == "ok"


async def _true(value: bool) -> bool:
    return value


async def test_listing_conversations_on_a_facade_makes_no_homeserver_call(
    stack, facade_processes
) -> None:
    app, process_c = stack.app, facade_processes[1]
    url_c = process_c.url
    alice, bob = await asyncio.gather(crm_user(app, "Alice L"), crm_user(app, "Bob L"))
    chats = [await project_chat(app, [alice, bob]) for _ in range(4)]
    async with api_for(app, stack.bridge_url, alice) as a:
        for i, chat in enumerate(chats):
            status, _, _ = await a.post(
                "/api/chat/send", {"conversationId": chat.conversation_id, "content": f"hello {i}"}
            )
            assert status == 201

    # Indexed by the intake process (the transaction), previews included.
    async def indexed() -> bool:
        rows = [await app[CONVERSATIONS].get_by_room(c.room_id) for c in chats]
        return all(r and r.last_preview for r in rows)

    await eventually(indexed, timeout=15)
    # A row indexed before previews existed: filled once from the homeserver, then never.
    await app[DATABASE].execute(
        "UPDATE conversation SET last_preview=NULL WHERE room_id=$1", chats[0].room_id
    )
    before = await homeserver_calls(process_c)
    listed = await conversations(app, url_c, bob)
    first = await homeserver_calls(process_c)
    fetched = {k: first[k] - before.get(k, 0) for k in first if first[k] != before.get(k, 0)}
    assert list(fetched.values()) == [1] and "event" in next(iter(fetched)), fetched
    for i, chat in enumerate(chats):
        assert last_content(listed, chat.conversation_id) == f"hello {i}"

    for _ in range(3):
        listed = await conversations(app, url_c, bob)
        for i, chat in enumerate(chats):
            assert last_content(listed, chat.conversation_id) == f"hello {i}"
    assert await homeserver_calls(process_c) == first
    assert await app[USERS].get(bob.crm_user_id) is not None


async def test_unread_count_is_capped_for_display(stack) -> None:
    app = stack.app
    alice, bob = await asyncio.gather(crm_user(app, "Alice U"), crm_user(app, "Bob U"))
    chat = await project_chat(app, [alice, bob])
    # Only the index counts: 120 messages from Alice that Bob has not read.
    for i in range(120):
        await app[EVENT_INDEX].add(
            f"${unique('e')}", chat.room_id, alice.mxid, "m.room.message", "m.text", 1000 + i
        )
    listed = await conversations(app, stack.bridge_url, bob)
    entry = next(c for c in listed if c["_id"] == chat.conversation_id)
    assert entry["unreadCount"] == UNREAD_CAP == 100
    mine = next(
        c
        for c in await conversations(app, stack.bridge_url, alice)
        if c["_id"] == chat.conversation_id
    )
    assert mine["unreadCount"] == 0


def presence_asks(calls: dict[str, int]) -> int:
    return sum(n for labels, n in calls.items() if "/presence/" in labels and "GET" in labels)


async def test_the_user_directory_asks_no_presence_inside_the_request(
    stack, facade_processes
) -> None:
    app, facade = stack.app, facade_processes[0]
    tag = unique("dir")
    # Directory rows the presence board has never seen: Synapse is asked about each in
    # the end (it answers for users it does not know too), but never inside the request.
    people = [
        CrmUser(
            crm_user_id=f"{tag}-{i}",
            mxid=app[IDS].puppet_mxid(f"{tag}-{i}"),
            name=f"Directory {i}",
            email=f"{tag}-{i}@example.com",
        )
        for i in range(1500)
    ]
    for row in people:
        await app[USERS].upsert(row)
    reader = await crm_user(app, "Directory Reader")
    try:
        before = presence_asks(await homeserver_calls(facade))
        started = asyncio.get_running_loop().time()
        async with api_for(app, facade.url, reader) as api:
            status, listed, _ = await api.get("/api/users")
        took = asyncio.get_running_loop().time() - started
        during = presence_asks(await homeserver_calls(facade)) - before
        assert status == 200, listed
        ids = {u["_id"] for u in listed}
        assert {row.crm_user_id for row in people} <= ids
        # Only what the refresh started beside the answer (a batch of 8, or two).
        assert during <= 16, during
        await asyncio.sleep(3.0)
        elapsed = asyncio.get_running_loop().time() - started
        later = presence_asks(await homeserver_calls(facade)) - before
        print(
            f"/api/users of {len(listed)} users: {took:.2f} s, presence asks {during} by "
            f"the answer, {later} after {elapsed:.1f} s (rate {RATE}/s)"
        )
        assert 0 < later <= RATE * elapsed + 8, later
    finally:
        for row in people:
            row.active = False
            await app[USERS].upsert(row)
