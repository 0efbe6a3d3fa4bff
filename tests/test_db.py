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
