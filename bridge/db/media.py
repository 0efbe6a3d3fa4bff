"""Files uploaded through the facade (table ``media``): what the bytes were checked to be."""

from __future__ import annotations

from dataclasses import dataclass, field

from mautrix.util.async_db import Database

from .crm_user import now_ms

COLUMNS = "mxc, crm_user_id, filename, original_name, mimetype, size, created_at"


@dataclass
class Media:
    mxc: str
    crm_user_id: str
    filename: str
    original_name: str
    mimetype: str
    size: int
    created_at: int = field(default_factory=now_ms)


class MediaStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, media: Media) -> None:
        await self.db.execute(
            f"INSERT INTO media ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) "
            "ON CONFLICT (mxc) DO NOTHING",
            media.mxc, media.crm_user_id, media.filename, media.original_name,
            media.mimetype, media.size, media.created_at,
        )  # fmt: skip

    async def get(self, mxc: str) -> Media | None:
        row = await self.db.fetchrow(f"SELECT {COLUMNS} FROM media WHERE mxc=$1", mxc)
        return Media(**row) if row else None

    async def posted_in(self, mxc: str, room_id: str) -> None:
        await self.db.execute(
            "INSERT INTO media_room (mxc, room_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            mxc, room_id,
        )  # fmt: skip
        # A file posted in a room is no one's public avatar (see avatar_is).
        await self.db.execute("DELETE FROM media_avatar WHERE mxc=$1", mxc)

    async def avatar_is(self, mxid: str, mxc: str | None) -> None:
        """A Matrix user's profile, as just read, shows this avatar (or none). Every CRM user
        may then fetch it, unless it is an upload or a file posted in a room: such a file
        is readable by those the room lets read it, not by whoever names it as an avatar."""
        await self.db.execute("DELETE FROM media_avatar WHERE mxid=$1 AND mxc<>$2", mxid, mxc or "")
        if not mxc:
            return
        await self.db.execute(
            "INSERT INTO media_avatar (mxc, mxid) SELECT $1, $2 "
            "WHERE NOT EXISTS (SELECT 1 FROM media WHERE mxc=$1) "
            "AND NOT EXISTS (SELECT 1 FROM media_room WHERE mxc=$1) "
            "ON CONFLICT (mxc, mxid) DO NOTHING",
            mxc, mxid,
        )  # fmt: skip

    async def avatar_owners(self, mxc: str) -> list[str]:
        """The users whose profile showed this file as their avatar when last read."""
        rows = await self.db.fetch("SELECT mxid FROM media_avatar WHERE mxc=$1", mxc)
        return [row["mxid"] for row in rows]

    async def may_download(self, mxc: str, crm_user_id: str, mxids: list[str]) -> bool:
        """The uploader, or someone joined (as puppet or linked account) where it was posted.
        (Avatars: ``ChatService.may_download``, which checks the owner's profile.)"""
        placeholders = ", ".join(f"${i + 3}" for i in range(len(mxids)))
        allowed = await self.db.fetchval(
            "SELECT 1 FROM media WHERE mxc=$1 AND crm_user_id=$2 "
            "UNION ALL SELECT 1 FROM media_room r JOIN room_member m ON m.room_id = r.room_id "
            f"WHERE r.mxc=$1 AND m.membership='join' AND m.mxid IN ({placeholders}) LIMIT 1",
            mxc, crm_user_id, *mxids,
        )  # fmt: skip
        return allowed is not None
