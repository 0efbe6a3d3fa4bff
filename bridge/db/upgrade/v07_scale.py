"""Scale-out: a preview of each conversation's last message, DM claims, hot-path indexes.

``conversation.last_preview`` is a cache of the last message's sender, type and (bounded)
content, so listing conversations needs no homeserver call on any process; Matrix still
holds the history. ``direct_claim`` makes DM creation idempotent across processes: the
pair is claimed before the room is created, so a loser never creates one.
"""

from __future__ import annotations

from mautrix.util.async_db import Connection

from .table import upgrade_table


@upgrade_table.register(description="scale-out: last message preview, DM claims, indexes")
async def upgrade_v7(conn: Connection) -> None:
    await conn.execute("ALTER TABLE conversation ADD COLUMN last_preview TEXT")
    await conn.execute(
        """CREATE TABLE direct_claim (
            direct_key TEXT PRIMARY KEY,
            token      TEXT NOT NULL,
            claimed_at BIGINT NOT NULL,
            room_id    TEXT
        )"""
    )
    # Unread counts and listings look receipts up by reader first.
    await conn.execute("CREATE INDEX receipt_mxid ON receipt (mxid, room_id)")
