"""A cache of each user's clear-chat point (the record is their Matrix room account data)."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from .table import upgrade_table


@upgrade_table.register(description="api: clear-chat points (cache of room account data)")
async def upgrade_v9(conn: Connection) -> None:
    # One row per (room, puppet): history up to event_id (index seq, origin ts) is hidden for
    # that user. Written after Matrix accepted com.crm.cleared, so unread counts and lists
    # need no homeserver call; checked against Matrix once per process (api/clear.py).
    await conn.execute(
        """CREATE TABLE cleared_history (
            room_id  TEXT NOT NULL,
            mxid     TEXT NOT NULL,
            event_id TEXT,
            seq      BIGINT NOT NULL,
            ts       BIGINT NOT NULL,
            PRIMARY KEY (room_id, mxid)
        )"""
    )
    # Receipts by reader (db/unread.py) are served by receipt_mxid from v07_scale.
