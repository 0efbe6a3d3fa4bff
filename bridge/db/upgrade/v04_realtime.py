"""Schema changes of the realtime side: how far receipts were announced to sockets."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from .table import upgrade_table


@upgrade_table.register(description="realtime: announced receipts")
async def upgrade_v4(conn: Connection) -> None:
    await conn.execute(
        """CREATE TABLE announced_receipt (
            room_id TEXT NOT NULL,
            mxid    TEXT NOT NULL,
            seq     BIGINT NOT NULL,
            PRIMARY KEY (room_id, mxid)
        )"""
    )
