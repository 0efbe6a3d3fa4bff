"""Matrix users' avatars: readable by every CRM user only as their owner's current avatar."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from .table import upgrade_table


@upgrade_table.register(description="chat: avatar grants keyed on the avatar's owner")
async def upgrade_v15(conn: Connection) -> None:
    # One row per (file, user whose profile shows it); dropped when the profile changes.
    await conn.execute(
        """CREATE TABLE media_avatar (
            mxc  TEXT NOT NULL,
            mxid TEXT NOT NULL,
            PRIMARY KEY (mxc, mxid)
        )"""
    )
    await conn.execute("CREATE INDEX media_avatar_mxid ON media_avatar (mxid)")
    # The old grants ("*" rows) named no owner, and any profile could make any file public.
    await conn.execute("DELETE FROM media_room WHERE room_id='*'")
