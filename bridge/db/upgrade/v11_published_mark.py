"""The delivery log's published mark (realtime/log.py): per room, the highest ``seq`` every
process has been told about."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from .table import upgrade_table


@upgrade_table.register(description="realtime: published mark per room (the delivery log)")
async def upgrade_v11(conn: Connection) -> None:
    await conn.execute(
        """CREATE TABLE published_mark (
            room_id TEXT PRIMARY KEY,
            seq     BIGINT NOT NULL
        )"""
    )
    # What was indexed before the log existed was delivered the old way: not published again.
    await conn.execute(
        "INSERT INTO published_mark (room_id, seq) "
        "SELECT room_id, MAX(seq) FROM room_event GROUP BY room_id"
    )
    # The claims the log replaces (realtime/dedup.py, gone).
    await conn.execute("DROP TABLE IF EXISTS emitted_event")
