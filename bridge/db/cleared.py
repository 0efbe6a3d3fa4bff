"""Clear-chat points (table ``cleared_history``): a cache of Matrix room account data."""

from __future__ import annotations

from dataclasses import dataclass

from mautrix.util.async_db import Database

from .receipt import position_of

COLUMNS = "room_id, mxid, event_id, pos, ts"
# The point's current position: its event's, as for receipts (db/receipt.py).
_SELECT = f"SELECT room_id, mxid, event_id, {position_of('cleared_history')} AS pos, ts "


@dataclass
class ClearPoint:
    """History up to this point is hidden for one user: the event (timeline position, origin
    ts)."""

    room_id: str
    mxid: str
    event_id: str | None
    pos: int
    ts: int

    def hides(self, event_id: str, ts: int, pos: int | None) -> bool:
        """Whether an event is at or before the point (by time, then by timeline order)."""
        if event_id == self.event_id or ts < self.ts:
            return True
        return ts == self.ts and pos is not None and pos <= self.pos


class ClearedStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, room_id: str, mxid: str) -> ClearPoint | None:
        row = await self.db.fetchrow(
            _SELECT + "FROM cleared_history WHERE room_id=$1 AND mxid=$2", room_id, mxid
        )
        return ClearPoint(**row) if row else None

    async def of_user(self, mxid: str) -> dict[str, ClearPoint]:
        rows = await self.db.fetch(_SELECT + "FROM cleared_history WHERE mxid=$1", mxid)
        return {row["room_id"]: ClearPoint(**row) for row in rows}

    async def put(self, point: ClearPoint) -> None:
        await self.db.execute(
            f"INSERT INTO cleared_history ({COLUMNS}) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (room_id, mxid) DO UPDATE SET event_id=excluded.event_id, "
            "pos=excluded.pos, ts=excluded.ts",
            point.room_id, point.mxid, point.event_id, point.pos, point.ts,
        )  # fmt: skip

    async def delete(self, room_id: str, mxid: str) -> None:
        await self.db.execute(
            "DELETE FROM cleared_history WHERE room_id=$1 AND mxid=$2", room_id, mxid
        )
