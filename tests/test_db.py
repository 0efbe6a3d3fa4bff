from __future__ import annotations

from bridge.db.room_event import RoomEventIndex
from bridge.db.txn import TransactionLog


async def test_transaction_log(db) -> None:
    log = TransactionLog(db)
    assert not await log.seen("t1")
    await log.record("t1", 3)
    await log.record("t1", 3)  # recording twice is harmless
    assert await log.seen("t1")
    assert await log.count() == 1
    await log.prune()
    assert await log.seen("t1")  # recent ids are kept
    await db.execute("UPDATE as_txn SET processed_at=0")
    await log.prune()
    assert not await log.seen("t1")


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


async def test_users_projects_and_conversations(db) -> None:
    from bridge.db.conversation import PROJECT, ConversationStore
    from bridge.db.crm_user import CrmUser, CrmUserStore
    from bridge.db.project import Project, ProjectStore

    users = CrmUserStore(db)
    await users.upsert(CrmUser("u1", "@crm_u1:x", "Ann", "ann@x", matrix_id="@ann:x"))
    await users.upsert(CrmUser("u2", "@crm_u2:x", "Bob", "bob@x", role="manager"))
    await users.upsert(CrmUser("u2", "@crm_u2:x", "Bobby", "bob@x", role="manager"))
    assert (await users.get("u2")).name == "Bobby"
    assert (await users.get_by_mxid("@ann:x")).crm_user_id == "u1"
    assert (await users.get_by_mxid("@crm_u1:x")).mxids == ["@crm_u1:x", "@ann:x"]
    assert set(await users.get_many(["u1", "u2", "nope"])) == {"u1", "u2"}

    projects = ProjectStore(db)
    await projects.upsert(Project("p1", "Apollo", members=["u1", "u2"], applied={"name": "A"}))
    await projects.upsert(Project("p1", "Apollo", room_id="!r", members=["u2"]))
    project = await projects.get("p1")
    assert project.members == ["u2"] and project.room_id == "!r"
    assert (await projects.get_by_room("!r")).project_id == "p1"
    assert await projects.projects_of("u2") == ["p1"]

    conversations = ConversationStore(db)
    first = await conversations.add("!r", PROJECT, project_id="p1")
    assert (await conversations.add("!r", PROJECT, project_id="p1")) == first
    await conversations.touch("!r", "$new", first.last_activity + 10)
    await conversations.touch("!r", "$old", first.last_activity - 10)
    assert (await conversations.get(first.conversation_id)).last_event_id == "$new"


async def test_receipts_only_move_forward(db) -> None:
    from bridge.db.receipt import ReceiptStore

    receipts = ReceiptStore(db)
    assert await receipts.advance("!r", "@a:x", "$2", 2, 100)
    assert not await receipts.advance("!r", "@a:x", "$1", 1, 200)
    assert await receipts.advance("!r", "@a:x", "$3", 3, 300)
    assert (await receipts.get("!r", "@a:x")).event_id == "$3"
