"""Matrix membership in our rooms, as the bridge last saw or applied it."""

from __future__ import annotations

from mautrix.util.async_db import Database


class RoomMemberStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def set(self, room_id: str, mxid: str, membership: str) -> None:
        await self.db.execute(
            "INSERT INTO room_member (room_id, mxid, membership) VALUES ($1, $2, $3) "
            "ON CONFLICT (room_id, mxid) DO UPDATE SET membership=excluded.membership",
            room_id, mxid, membership,
        )  # fmt: skip

    async def get(self, room_id: str, mxid: str) -> str | None:
        return await self.db.fetchval(
            "SELECT membership FROM room_member WHERE room_id=$1 AND mxid=$2", room_id, mxid
        )

    async def of_room(self, room_id: str) -> dict[str, str]:
        rows = await self.db.fetch(
            "SELECT mxid, membership FROM room_member WHERE room_id=$1", room_id
        )
        return {r["mxid"]: r["membership"] for r in rows}

    async def joined_rooms(self, mxid: str) -> list[str]:
        rows = await self.db.fetch(
            "SELECT room_id FROM room_member WHERE mxid=$1 AND membership='join'", mxid
        )
        return [r["room_id"] for r in rows]
