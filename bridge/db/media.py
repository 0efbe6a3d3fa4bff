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
