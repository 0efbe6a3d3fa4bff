"""The newest read receipt per user and room (a receipt at E reads everything up to E).

Receipts compare by timeline position (db/room_event.py, ``pos``). A receipt keeps its
event's id and the position it had when stored; its position is its event's current one
(the stored one once the event has left the index): a receipt at a message only the send
path had indexed moves with it when the message's transaction places it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mautrix.util.async_db import Database


def position_of(alias: str) -> str:
    """SQL: the current position of the receipt-like row ``alias`` (event_id, pos)."""
    return (
        f"COALESCE((SELECT p.pos FROM room_event p WHERE p.event_id = {alias}.event_id), "
        f"{alias}.pos)"
    )


@dataclass
class Receipt:
    room_id: str
    mxid: str
    event_id: str
    pos: int
    ts: int


@dataclass
class ReadMark:
    """A receipt as message objects show it: with the origin time of the event read."""

    room_id: str
    mxid: str
    pos: int
    ts: int
    event_ts: int


_MARK = (
    "SELECT r.room_id, r.mxid, COALESCE(e.pos, r.pos) AS pos, r.ts, "
    "COALESCE(e.origin_ts, 0) AS event_ts "
    "FROM receipt r LEFT JOIN room_event e ON e.event_id = r.event_id "
)
_RECEIPT = f"SELECT room_id, mxid, event_id, {position_of('receipt')} AS pos, ts FROM receipt "


class ReceiptStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def advance(self, room_id: str, mxid: str, event_id: str, pos: int, ts: int) -> bool:
        """Store a receipt unless the user already read further; True when it moved."""
        result = await self.db.execute(
            "INSERT INTO receipt (room_id, mxid, event_id, pos, ts) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (room_id, mxid) DO UPDATE SET event_id=excluded.event_id, "
            f"pos=excluded.pos, ts=excluded.ts WHERE {position_of('receipt')} < "
            f"{position_of('excluded')}",
            room_id, mxid, event_id, pos, ts,
        )  # fmt: skip
        return _rows_changed(result) > 0

    async def of_room(self, room_id: str) -> list[Receipt]:
        rows = await self.db.fetch(_RECEIPT + "WHERE room_id=$1", room_id)
        return [Receipt(**r) for r in rows]

    async def marks(self, room_ids: list[str]) -> list[ReadMark]:
        """Every receipt in these rooms."""
        if not room_ids:
            return []
        placeholders = ", ".join(f"${i + 1}" for i in range(len(room_ids)))
        rows = await self.db.fetch(_MARK + f"WHERE r.room_id IN ({placeholders})", *room_ids)
        return [ReadMark(**r) for r in rows]

    async def marks_in_rooms_of(self, mxid: str) -> list[ReadMark]:
        """Every receipt in the rooms this account joined."""
        rows = await self.db.fetch(
            _MARK + "WHERE r.room_id IN (SELECT room_id FROM room_member "
            "WHERE mxid=$1 AND membership='join')",
            mxid,
        )
        return [ReadMark(**r) for r in rows]

    async def get(self, room_id: str, mxid: str) -> Receipt | None:
        row = await self.db.fetchrow(_RECEIPT + "WHERE room_id=$1 AND mxid=$2", room_id, mxid)
        return Receipt(**row) if row else None


def _rows_changed(result: object) -> int:
    # asyncpg returns a status string ("INSERT 0 1"); aiosqlite returns a cursor.
    if isinstance(result, str):
        return int(result.rsplit(" ", 1)[-1] or 0)
    return int(getattr(result, "rowcount", 0) or 0)
