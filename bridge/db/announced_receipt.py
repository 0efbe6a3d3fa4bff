"""How far each reader's receipts were announced to sockets (table ``announced_receipt``).

The facade moves ``receipt`` itself when a CRM user marks a conversation read, before the
homeserver echoes the receipt back, so the real-time side keeps its own position to know
which messages a receipt newly covers.
"""

from __future__ import annotations

from mautrix.util.async_db import Database


class AnnouncedReceiptStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def advance(self, room_id: str, mxid: str, seq: int) -> int | None:
        """Move the position to seq; returns the previous one (0 if none), None if not moved."""
        async with self.db.acquire() as conn, conn.transaction():
            previous = await conn.fetchval(
                "SELECT seq FROM announced_receipt WHERE room_id=$1 AND mxid=$2",
                room_id, mxid,
            )  # fmt: skip
            if previous is not None and previous >= seq:
                return None
            await conn.execute(
                "INSERT INTO announced_receipt (room_id, mxid, seq) VALUES ($1, $2, $3) "
                "ON CONFLICT (room_id, mxid) DO UPDATE SET seq=excluded.seq",
                room_id, mxid, seq,
            )  # fmt: skip
        return int(previous or 0)
