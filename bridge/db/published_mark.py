"""The delivery log's published mark (table ``published_mark``): per room, the highest
``seq`` of ``room_event`` that every process has been told about. It only moves forward."""

from __future__ import annotations

from mautrix.util.async_db import Database

ADVANCE = (
    "INSERT INTO published_mark (room_id, seq) VALUES ($1, $2) ON CONFLICT (room_id) "
    "DO UPDATE SET seq = excluded.seq WHERE published_mark.seq < excluded.seq"
)


class PublishedMarkStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, room_id: str) -> int:
        seq = await self.db.fetchval("SELECT seq FROM published_mark WHERE room_id=$1", room_id)
        return int(seq or 0)

    async def advance(self, marks: dict[str, int]) -> None:
        """Move each room's mark up to the given seq (never down), in one transaction."""
        if not marks:
            return
        async with self.db.acquire() as conn, conn.transaction():
            for room_id, seq in sorted(marks.items()):
                await conn.execute(ADVANCE, room_id, seq)

    async def behind(self, active_since: int = 0) -> dict[str, int]:
        """Conversations active since ``active_since`` (ms; 0: all) whose newest indexed
        row is past their mark: room id → newest seq. One index probe per conversation."""
        rows = await self.db.fetch(
            "SELECT room_id, newest FROM (SELECT c.room_id, COALESCE(m.seq, 0) AS mark, "
            "(SELECT MAX(e.seq) FROM room_event e WHERE e.room_id = c.room_id) AS newest "
            "FROM conversation c LEFT JOIN published_mark m ON m.room_id = c.room_id "
            "WHERE c.last_activity >= $1) AS t WHERE newest > mark",
            active_since,
        )
        return {row["room_id"]: int(row["newest"]) for row in rows}
