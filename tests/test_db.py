from __future__ import annotations

import asyncio
from dataclasses import fields
from pathlib import Path

import pytest
from mautrix.util.async_db import Database, UpgradeTable

from bridge.db import create_database
from bridge.db.room_event import RoomEventIndex
from bridge.db.txn import TransactionLog, TxnDigest
from bridge.db.upgrade import upgrade_table
from tests.conftest import POSTGRES_DSN, create_schema, drop_schema, postgres_args


async def test_transaction_log(db) -> None:
    log = TransactionLog(db)
    first, second = TxnDigest("b1", "e1"), TxnDigest("b2", "e2")
    assert await log.get("t1") is None
    await log.record("t1", first, 3)
    await log.record("t1", first, 3)  # recording twice is harmless
    assert await log.get("t1") == first
    assert await log.count() == 1
    # A reused id (the homeserver reset its counter) replaces the old row.
    await log.record("t1", second, 1)
    assert await log.get("t1") == second
    assert await log.count() == 1
    await log.prune()
    assert await log.get("t1") == second  # recent ids are kept
    await db.execute("UPDATE as_txn SET processed_at=0")
    await log.prune()
    assert await log.count() == 0


def test_digest_tells_a_retry_from_a_new_transaction() -> None:
    message = {"type": "m.room.message", "event_id": "$a", "content": {"body": "hi"}}
    typing = {"type": "m.typing", "room_id": "!r", "content": {"user_ids": ["@a:x"]}}
    sent = TxnDigest.of(
        {"events": [{**message, "age": 35, "unsigned": {"age": 35}}], "ephemeral": [typing]}
    )
    # Synapse's retry: the same events from its database, a new age, no ephemeral events.
    retry = TxnDigest.of({"events": [{**message, "age": 2047, "unsigned": {"age": 2047}}]})
    assert sent.replayed_by(retry, has_ephemeral=False)
    assert sent.replayed_by(sent, has_ephemeral=True)
    other = TxnDigest.of({"events": [{**message, "event_id": "$b"}], "ephemeral": [typing]})
    assert not sent.replayed_by(other, has_ephemeral=True)
    # Ephemeral-only transactions differ by their ephemeral events.
    stopped = {**typing, "content": {"user_ids": []}}
    typed = TxnDigest.of({"events": [], "ephemeral": [typing]})
    assert not typed.replayed_by(TxnDigest.of({"events": [], "ephemeral": [stopped]}), True)


async def test_event_index_is_idempotent_and_ordered(db) -> None:
    index = RoomEventIndex(db)
    first, new = await index.add("$a", "!r", "@u:x", "m.room.message", "m.text", 1000)
    assert new
    again, new_again = await index.add("$a", "!r", "@u:x", "m.room.message", "m.text", 1000)
    assert not new_again and again == first
    second, _ = await index.add("$b", "!r", "@v:x", "m.room.message", "m.image", 900)
    assert second.seq > first.seq  # arrival order, not origin_ts, is the cursor
    assert (await index.latest("!r")).event_id == "$b"
    assert await index.count("!r") == 2
    assert await index.get("$missing") is None


@pytest.mark.parametrize("db", ["postgres"], indirect=True)  # SQLite: one writer at a time
async def test_event_index_seq_becomes_visible_in_order(db) -> None:
    """A writer that drew a seq but has not committed holds back later writers of its room,
    so a reader paging ``seq > cursor`` never sees N+1 while N is still to come."""
    index = RoomEventIndex(db)
    await index.add("$first", "!r", "@u:x", "m.room.message", "m.text", 1)
    # acquire_direct: a connection of its own (acquire() would lend it to every task here).
    async with db.acquire_direct() as conn, conn.transaction():
        # In flight: indexed on this connection, not committed yet.
        held, _ = await RoomEventIndex(conn).add("$held", "!r", "@u:x", "m.room.message", None, 2)
        later = asyncio.create_task(index.add("$later", "!r", "@v:x", "m.room.message", None, 3))
        other = await index.add("$other", "!elsewhere", "@v:x", "m.room.message", None, 4)
        await asyncio.sleep(0.3)
        visible = [e.event_id for e in await index.between("!r", 0, 1 << 62)]
        assert visible == ["$first"], "a later seq became visible before the one in flight"
        assert not later.done()
        assert other[1]  # another room is not held back
    (after, _) = await asyncio.wait_for(later, timeout=5)
    assert after.seq > held.seq
    seen = [e.event_id for e in await index.between("!r", 0, 1 << 62)]
    assert seen == ["$first", "$held", "$later"]


async def test_event_index_concurrent_writers_leave_no_gap_behind_a_reader(db) -> None:
    """Many writers of one room at once, and a reader polling ``seq > cursor`` as the live
    ``after`` walk does: the reader ends with every event exactly once."""
    index = RoomEventIndex(db)
    total, writers = 300, 8
    done = asyncio.Event()

    async def writer(w: int) -> None:
        for n in range(w, total, writers):
            await index.add(f"$e{n}", "!busy", "@u:x", "m.room.message", None, n)

    async def reader() -> list[str]:
        seen: list[str] = []
        cursor = 0
        for _ in range(100000):
            finished = done.is_set()
            rows = (await index.between("!busy", cursor, 1 << 62))[:50]
            seen += [r.event_id for r in rows]
            cursor = rows[-1].seq if rows else cursor
            if finished and not rows:
                return seen
            if not rows:
                await asyncio.sleep(0)
        raise AssertionError("reader did not end")

    polling = asyncio.create_task(reader())
    await asyncio.gather(*(writer(w) for w in range(writers)))
    done.set()
    seen = await asyncio.wait_for(polling, timeout=60)
    assert sorted(seen) == sorted(f"$e{n}" for n in range(total))
    assert len(seen) == len(set(seen))


async def test_users_projects_and_conversations(db) -> None:
    from bridge.db.conversation import COLUMNS as CONVERSATION_COLUMNS
    from bridge.db.conversation import PROJECT, Conversation, ConversationStore
    from bridge.db.crm_user import COLUMNS, CrmUser, CrmUserStore
    from bridge.db.project import Project, ProjectStore

    users = CrmUserStore(db)
    await users.upsert(CrmUser("u1", "@crm_u1:x", "Ann", "ann@x", matrix_id="@ann:x"))
    await users.upsert(CrmUser("u2", "@crm_u2:x", "Bob", "bob@x", role="manager"))
    await users.upsert(CrmUser("u2", "@crm_u2:x", "Bobby", "bob@x", role="manager"))
    assert (await users.get("u2")).name == "Bobby"
    assert (await users.get_by_mxid("@ann:x")).crm_user_id == "u1"
    assert (await users.get_by_mxid("@crm_u1:x")).mxids == ["@crm_u1:x", "@ann:x"]
    assert set(await users.get_many(["u1", "u2", "nope"])) == {"u1", "u2"}
    # Rows become users by position: the columns are read in the fields' order.
    assert [c.strip() for c in COLUMNS.split(",")] == [f.name for f in fields(CrmUser)]
    ann = await users.get("u1")
    assert ann.active is True and ann.registered is False and ann.matrix_id == "@ann:x"

    projects = ProjectStore(db)
    await projects.upsert(Project("p1", "Apollo", members=["u1", "u2"], applied={"name": "A"}))
    await projects.upsert(Project("p1", "Apollo", room_id="!r", members=["u2"]))
    project = await projects.get("p1")
    assert project.members == ["u2"] and project.room_id == "!r"
    assert (await projects.get_by_room("!r")).project_id == "p1"
    assert await projects.projects_of("u2") == ["p1"]

    conversations = ConversationStore(db)
    # The list (db/listing.py) builds rows by position too.
    assert [c.strip() for c in CONVERSATION_COLUMNS.split(",")] == [
        f.name for f in fields(Conversation)
    ]
    first = await conversations.add("!r", PROJECT, project_id="p1")
    assert (await conversations.add("!r", PROJECT, project_id="p1")) == first
    # The last message is the newest in the live order (seq), whatever the timestamps say;
    # the last activity is the newest timestamp.
    index, ts = RoomEventIndex(db), first.last_activity
    await index.add("$early", "!r", "@u:x", "m.room.message", None, ts + 10)
    await conversations.touch("!r", "$early", ts + 10)
    await index.add("$late", "!r", "@u:x", "m.room.message", None, ts - 10)
    await conversations.touch("!r", "$late", ts - 10)
    await conversations.touch("!r", "$early", ts + 10)  # indexed early, touched again later
    touched = await conversations.get(first.conversation_id)
    assert (touched.last_event_id, touched.last_activity) == ("$late", ts + 10)


async def test_receipts_only_move_forward(db) -> None:
    from bridge.db.receipt import ReceiptStore

    receipts = ReceiptStore(db)
    assert await receipts.advance("!r", "@a:x", "$2", 2, 100)
    assert not await receipts.advance("!r", "@a:x", "$1", 1, 200)
    assert await receipts.advance("!r", "@a:x", "$3", 3, 300)
    assert (await receipts.get("!r", "@a:x")).event_id == "$3"


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_upgrade_to_digests_keeps_old_ids_from_looking_like_replays(
    engine: str, tmp_path: Path
) -> None:
    """A database at v4 with recorded ids: after v5 those ids match no digest."""
    schema = await create_schema() if engine == "postgres" else None
    url = POSTGRES_DSN if schema else f"sqlite:{tmp_path / 'bridge.db'}"
    args = postgres_args(schema) if schema else {}
    try:
        before = UpgradeTable(version_table_name="bridge_version", database_name="bridge")
        before.upgrades = upgrade_table.upgrades[:4]
        old = Database.create(
            url, upgrade_table=before, db_args=dict(args), owner_name="crm-bridge"
        )
        await old.start()
        await old.execute(
            "INSERT INTO as_txn (txn_id, event_count, processed_at) VALUES ('1', 2, 5)"
        )
        await old.stop()

        db = create_database(url, args)
        await db.start()
        try:
            log = TransactionLog(db)
            assert await log.count() == 1
            assert await log.get("1") is None  # no digest: the next transaction 1 is handled
            digest = TxnDigest.of({"events": []})
            await log.record("1", digest, 0)
            assert await log.get("1") == digest
        finally:
            await db.stop()
    finally:
        if schema:
            await drop_schema(schema)


async def test_timeline_positions_follow_the_homeserver_order(db) -> None:
    """The send path's rows sit after every placed one until their transaction places them;
    receipts at them move along; a transaction handled again changes nothing."""
    from bridge.db.announced_receipt import AnnouncedReceiptStore
    from bridge.db.receipt import ReceiptStore
    from bridge.db.room_event import BACKFILL, PROVISIONAL, SENT

    index, receipts = RoomEventIndex(db), ReceiptStore(db)
    first, _ = await index.add("$t1", "!r", "@a:x", "m.room.message", "m.text", 1)
    sent, _ = await index.add("$s1", "!r", "@b:x", "m.room.message", "m.text", 2, arrival=SENT)
    later, _ = await index.add("$s2", "!r", "@b:x", "m.room.message", "m.text", 3, arrival=SENT)
    assert first.placed and not sent.placed and not later.placed
    assert first.pos < sent.pos < later.pos and sent.pos >= PROVISIONAL
    # Read up to $s1 while only the send path knows it, and announced so far.
    assert await receipts.advance("!r", "@c:x", "$s1", sent.pos, 10)
    announced = AnnouncedReceiptStore(db)
    assert await announced.advance("!r", "@c:x", "$s1", sent.pos) == 0
    # Synapse's stream had $t2 and $s2 before $s1: their transactions come first.
    t2, _ = await index.add("$t2", "!r", "@a:x", "m.room.message", "m.text", 4)
    s2, new = await index.add("$s2", "!r", "@b:x", "m.room.message", "m.text", 3)
    s1, _ = await index.add("$s1", "!r", "@b:x", "m.room.message", "m.text", 2)
    assert not new and s2.seq == later.seq  # the live order (seq) stays
    assert first.pos < t2.pos < s2.pos < s1.pos < PROVISIONAL
    # The same transaction again: nothing moves.
    again, _ = await index.add("$s1", "!r", "@b:x", "m.room.message", "m.text", 2)
    assert again == s1
    # The receipt is at $s1's placed position: $t2 and $s2 are read, as on Matrix.
    receipt = await receipts.get("!r", "@c:x")
    assert receipt is not None and receipt.pos == s1.pos
    assert [m.pos for m in await receipts.marks(["!r"])] == [s1.pos]
    assert [e.event_id for e in await index.read_between("!r", 0, receipt.pos)] == [
        "$t1",
        "$t2",
        "$s2",
        "$s1",
    ]
    # Receipts only move forward in the timeline order (not by live order).
    assert not await receipts.advance("!r", "@c:x", "$s2", s2.pos, 11)
    assert (await receipts.get("!r", "@c:x")).event_id == "$s1"
    assert await announced.advance("!r", "@c:x", "$s2", s2.pos) is None
    t3, _ = await index.add("$t3", "!r", "@a:x", "m.room.message", "m.text", 5)
    assert await announced.advance("!r", "@c:x", "$t3", t3.pos) == s1.pos
    assert (await index.last_read_point("!r")).event_id == "$t3"
    # A backfilled row is placed at once; a redacted one leaves its position to receipts.
    b1, _ = await index.add("$b1", "!r", "@a:x", "m.room.message", "m.text", 6, arrival=BACKFILL)
    assert b1.placed and b1.pos > t3.pos
    assert await receipts.advance("!r", "@d:x", "$b1", b1.pos, 12)
    await index.remove("$b1")
    assert (await receipts.get("!r", "@d:x")).pos == b1.pos


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_upgrade_to_positions_keeps_the_order_used_so_far(
    engine: str, tmp_path: Path
) -> None:
    """A database at v9: indexed rows take their seq as position, receipts keep theirs, and
    new rows come after them (PostgreSQL's sequence starts past the old seqs)."""
    from bridge.db.receipt import ReceiptStore

    schema = await create_schema() if engine == "postgres" else None
    url = POSTGRES_DSN if schema else f"sqlite:{tmp_path / 'bridge.db'}"
    args = postgres_args(schema) if schema else {}
    try:
        before = UpgradeTable(version_table_name="bridge_version", database_name="bridge")
        before.upgrades = upgrade_table.upgrades[:9]
        old = Database.create(
            url, upgrade_table=before, db_args=dict(args), owner_name="crm-bridge"
        )
        await old.start()
        for n in range(3):
            await old.execute(
                "INSERT INTO room_event (event_id, room_id, sender, event_type, origin_ts) "
                "VALUES ($1, '!r', '@a:x', 'm.room.message', 1)",
                f"$old{n}",
            )
        await old.execute(
            "INSERT INTO receipt (room_id, mxid, event_id, seq, ts) "
            "SELECT '!r', '@b:x', event_id, seq, 1 FROM room_event WHERE event_id = '$old1'"
        )
        await old.stop()

        db = create_database(url, args)
        await db.start()
        try:
            index = RoomEventIndex(db)
            rows = await index.get_many([f"$old{n}" for n in range(3)])
            assert all(row.pos == row.seq for row in rows.values())
            assert (await ReceiptStore(db).get("!r", "@b:x")).pos == rows["$old1"].seq
            new, _ = await index.add("$new", "!r", "@a:x", "m.room.message", None, 2)
            assert new.placed and new.pos > max(row.pos for row in rows.values())
        finally:
            await db.stop()
    finally:
        if schema:
            await drop_schema(schema)
