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

    async def of_rooms(self, room_ids: list[str]) -> dict[str, dict[str, str]]:
        """Membership of several rooms at once: {room_id: {mxid: membership}}."""
        out: dict[str, dict[str, str]] = {room_id: {} for room_id in room_ids}
        if not room_ids:
            return out
        placeholders = ", ".join(f"${i + 1}" for i in range(len(room_ids)))
        rows = await self.db.fetch(
            f"SELECT room_id, mxid, membership FROM room_member WHERE room_id IN ({placeholders})",
            *room_ids,
        )
        for r in rows:
            out[r["room_id"]][r["mxid"]] = r["membership"]
        return out

    async def set_many(self, room_id: str, memberships: dict[str, str]) -> None:
        """Several members of one room in one round trip (a room created with invites)."""
        if not memberships:
            return
        await self.db.executemany(
            "INSERT INTO room_member (room_id, mxid, membership) VALUES ($1, $2, $3) "
            "ON CONFLICT (room_id, mxid) DO UPDATE SET membership=excluded.membership",
            [(room_id, mxid, membership) for mxid, membership in memberships.items()],
        )

    async def joined_in(self, room_ids: list[str]) -> list[tuple[str, str]]:
        """(room_id, mxid) of every joined member of these rooms."""
        if not room_ids:
            return []
        placeholders = ", ".join(f"${i + 1}" for i in range(len(room_ids)))
        rows = await self.db.fetch(
            "SELECT room_id, mxid FROM room_member WHERE membership='join' "
            f"AND room_id IN ({placeholders})",
            *room_ids,
        )
        return [(r["room_id"], r["mxid"]) for r in rows]

    async def joined_in_rooms_of(self, mxid: str) -> list[tuple[str, str]]:
        """(room_id, member) of every joined member of the rooms this account joined."""
        rows = await self.db.fetch(
            "SELECT room_id, mxid FROM room_member WHERE membership='join' AND room_id IN "
            "(SELECT room_id FROM room_member WHERE mxid=$1 AND membership='join')",
            mxid,
        )
        return [(r["room_id"], r["mxid"]) for r in rows]

    async def co_members(self, mxid: str) -> list[str]:
        """Everyone joined to a conversation room this account joined (itself included)."""
        rows = await self.db.fetch(
            "SELECT DISTINCT mxid FROM room_member WHERE membership='join' AND room_id IN "
            "(SELECT m.room_id FROM room_member m JOIN conversation c ON c.room_id = m.room_id "
            "WHERE m.mxid=$1 AND m.membership='join')",
            mxid,
        )
        return [r["mxid"] for r in rows]
