"""How far each reader's receipts were announced to sockets (table ``announced_receipt``).

The facade moves ``receipt`` itself when a CRM user marks a conversation read, before the
homeserver echoes the receipt back, so the real-time side keeps its own position to know
which messages a receipt newly covers. Positions are timeline positions, and follow their
event as ``receipt`` does (db/receipt.py).
"""

from __future__ import annotations

from mautrix.util.async_db import Database

from .receipt import position_of


class AnnouncedReceiptStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def advance(self, room_id: str, mxid: str, event_id: str, pos: int) -> int | None:
        """Move the position to the event at ``pos``; returns the previous position (0 if
        none), None if not moved."""
        async with self.db.acquire() as conn, conn.transaction():
            previous = await conn.fetchval(
                f"SELECT {position_of('a')} FROM announced_receipt a "
                "WHERE a.room_id=$1 AND a.mxid=$2",
                room_id, mxid,
            )  # fmt: skip
            if previous is not None and previous >= pos:
                return None
            await conn.execute(
                "INSERT INTO announced_receipt (room_id, mxid, event_id, pos) "
                "VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (room_id, mxid) DO UPDATE SET event_id=excluded.event_id, "
                "pos=excluded.pos",
                room_id, mxid, event_id, pos,
            )  # fmt: skip
        return int(previous or 0)
