"""The scale-out stores and queries on both engines: DM claims, conversation previews, the
capped unread count, project lookups in bulk, and the engine lock across two pools."""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web
from mautrix.util.async_db import Scheme

from bridge.chat.preview import PREVIEW_CHARS, event_of, preview_of, redacted
from bridge.chat.service import ChatService
from bridge.config import Config
from bridge.context import (
    CONVERSATIONS,
    DATABASE,
    EVENT_INDEX,
    IDS,
    PROJECTS,
    RECEIPTS,
    ROOM_MEMBERS,
    USERS,
)
from bridge.crm.engine_lock import EngineLock
from bridge.db import create_database
from bridge.db.conversation import PROJECT, ConversationStore
from bridge.db.crm_user import CrmUser, CrmUserStore
from bridge.db.direct_claim import DirectClaimStore
from bridge.db.project import Project, ProjectStore
from bridge.db.published_mark import PublishedMarkStore
from bridge.db.receipt import ReceiptStore
from bridge.db.room_event import RoomEventIndex
from bridge.db.room_member import RoomMemberStore
from bridge.db.unread import UNREAD_CAP
from bridge.ids import IdMapper
from tests.conftest import POSTGRES_DSN, create_schema, drop_schema, postgres_args


async def test_direct_claims_have_one_holder(db) -> None:
    claims = DirectClaimStore(db)
    first = await claims.claim("a\x1fb", "t1", 1000)
    assert first is not None and first.token == "t1" and first.room_id is None
    second = await claims.claim("a\x1fb", "t2", 2000)
    assert second is not None and second.token == "t1"  # the first holder keeps it
    assert not await claims.take_over("a\x1fb", "wrong", "t2", 3000)
    await claims.set_room("a\x1fb", "t1", "!room")
    await claims.expire("a\x1fb", "t1")
    expired = await claims.claim("a\x1fb", "t2", 4000)
    assert expired is not None and (expired.token, expired.claimed_at) == ("t1", 0)
    assert await claims.take_over("a\x1fb", "t1", "t2", 5000)
    assert not await claims.take_over("a\x1fb", "t1", "t3", 5000)  # someone was quicker
    taken = await claims.claim("a\x1fb", "t3", 6000)
    assert taken is not None and (taken.token, taken.room_id) == ("t2", "!room")
    await claims.release("a\x1fb", "t1")  # not the holder: nothing happens
    assert (await claims.claim("a\x1fb", "t3", 7000)).token == "t2"
    await claims.release("a\x1fb", "t2")
    assert (await claims.claim("a\x1fb", "t3", 8000)).token == "t3"


async def test_previews_follow_the_last_message_and_its_redaction(db) -> None:
    conversations = ConversationStore(db)
    first = await conversations.add("!r", PROJECT, project_id="p1")
    long = "x" * (PREVIEW_CHARS + 500)
    event = {
        "event_id": "$a", "sender": "@crm_u1:x", "type": "m.room.message",
        "origin_server_ts": first.last_activity + 10,
        "content": {"msgtype": "m.text", "body": long, "com.crm.message": {
            "type": "text", "content": long, "attachments": []}, "huge": "y" * 10000},
    }  # fmt: skip
    await conversations.touch("!r", "$a", first.last_activity + 10, preview_of(event))
    row = await conversations.get_by_room("!r")
    assert row is not None and row.last_event_id == "$a"
    shown = event_of(row.last_preview, row.last_event_id, row.room_id)
    assert shown is not None and shown["sender"] == "@crm_u1:x"
    assert len(shown["content"]["body"]) == PREVIEW_CHARS and "huge" not in shown["content"]
    assert len(row.last_preview or "") < 3 * PREVIEW_CHARS
    # Only the conversation's last message changes its preview.
    assert not await conversations.set_preview("!r", "$older", redacted(row.last_preview))
    assert await conversations.set_preview("!r", "$a", redacted(row.last_preview))
    row = await conversations.get_by_room("!r")
    assert json.loads(row.last_preview or "")["content"] == {}
    assert await conversations.ids_by_room(["!r", "!none"]) == {"!r": first.conversation_id}


async def test_projects_of_a_member_in_two_queries(db) -> None:
    projects = ProjectStore(db)
    await projects.upsert(Project("p1", "Apollo", room_id="!a", members=["u1", "u2"]))
    await projects.upsert(Project("p2", "Gemini", members=["u2", "u3"]))
    await projects.upsert(Project("p3", "Mercury", room_id="!m", members=["u3"]))
    mine = {p.project_id: p.members for p in await projects.of_member("u2")}
    assert mine == {"p1": ["u1", "u2"], "p2": ["u2", "u3"]}
    assert await projects.of_member("nobody") == []
    assert await projects.room_ids() == {"!a", "!m"}


async def test_unread_counts_stop_at_the_cap(db) -> None:
    config = Config.load(None, environ={})
    app = web.Application()
    app[DATABASE] = db
    app[IDS] = IdMapper.from_config(config)
    app[EVENT_INDEX] = RoomEventIndex(db)
    app[USERS] = CrmUserStore(db)
    app[PROJECTS] = ProjectStore(db)
    app[CONVERSATIONS] = ConversationStore(db)
    app[ROOM_MEMBERS] = members = RoomMemberStore(db)
    app[RECEIPTS] = ReceiptStore(db)
    ann = CrmUser("u1", "@crm_u1:localhost", "Ann", "ann@x")
    bob = CrmUser("u2", "@crm_u2:localhost", "Bob", "bob@x")
    for user in (ann, bob):
        await app[USERS].upsert(user)
    for room in ("!many", "!few"):
        await app[CONVERSATIONS].add(room, PROJECT, project_id=room[1:])
        await members.set(room, ann.mxid, "join")
        await members.set(room, bob.mxid, "join")
    for i in range(UNREAD_CAP + 30):
        await app[EVENT_INDEX].add(f"$m{i}", "!many", ann.mxid, "m.room.message", "m.text", i)
    for i in range(3):
        await app[EVENT_INDEX].add(f"$f{i}", "!few", ann.mxid, "m.room.message", "m.text", i)
    chat = ChatService(app)
    listed = {c["matrixRoomId"]: c["unreadCount"] for c in await chat.conversations_for(bob)}
    assert listed == {"!many": UNREAD_CAP, "!few": 3}
    mine = {c["matrixRoomId"]: c["unreadCount"] for c in await chat.conversations_for(ann)}
    assert mine == {"!many": 0, "!few": 0}
    one = await chat.conversations_for(bob, room_id="!many")
    assert [c["unreadCount"] for c in one] == [UNREAD_CAP]


async def test_the_engine_lock_is_one_across_two_pools(db) -> None:
    if db.scheme != Scheme.POSTGRES:
        # SQLite: one process, so the lock is this process's.
        lock = EngineLock(db, "deployment")
        async with lock:
            assert lock.locked() and await lock.busy()
        assert not await lock.busy()
        return
    schema = await create_schema()
    other_db = create_database(POSTGRES_DSN, postgres_args(schema))
    await other_db.start()
    try:
        here, there = EngineLock(db, "deployment"), EngineLock(other_db, "deployment")
        elsewhere = EngineLock(other_db, "another deployment")
        order: list[str] = []
        async with here:
            assert await there.busy() and not there.locked()
            assert not await elsewhere.busy()

            async def second() -> None:
                async with there:
                    order.append("there")

            waiting = asyncio.create_task(second())
            await asyncio.sleep(0.5)
            assert not waiting.done()
            order.append("here")
        await asyncio.wait_for(waiting, timeout=10)
        assert order == ["here", "there"]
        assert not await here.busy()
    finally:
        await other_db.stop()
        await drop_schema(schema)


async def test_published_marks_only_move_forward_and_show_the_rooms_behind(db) -> None:
    """The delivery log's mark (realtime/log.py): per room, never back; ``behind`` lists
    the conversations whose newest indexed row is past it, active ones only when asked."""
    conversations, index, marks = ConversationStore(db), RoomEventIndex(db), PublishedMarkStore(db)
    for room in ("!quiet", "!busy"):
        await conversations.add(room, PROJECT, project_id=room[1:])
    quiet, _ = await index.add("$q1", "!quiet", "@a:x", "m.room.message", "m.text", 1000)
    await conversations.touch("!quiet", "$q1", 1000)
    rows = [(await index.add(f"$b{i}", "!busy", "@a:x", "m.room.message", "m.text", 5000 + i))[0]
            for i in range(3)]  # fmt: skip
    await conversations.touch("!busy", "$b2", 5002)
    assert await marks.get("!busy") == 0
    assert await marks.behind() == {"!quiet": quiet.seq, "!busy": rows[-1].seq}
    # Conversations with no activity since then are not looked at.
    assert await marks.behind(active_since=int(time.time() * 1000) + 60_000) == {}
    await marks.advance({"!busy": rows[1].seq, "!quiet": quiet.seq})
    await marks.advance({"!busy": rows[0].seq})  # an older batch written late: no step back
    assert await marks.get("!busy") == rows[1].seq
    assert await marks.behind() == {"!busy": rows[-1].seq}
    await marks.advance({"!busy": rows[-1].seq})
    assert await marks.behind() == {}
