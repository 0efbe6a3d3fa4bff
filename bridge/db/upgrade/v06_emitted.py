"""Messages already emitted to sockets, for a bridge without Redis (realtime/dedup.py)."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from .table import upgrade_table


@upgrade_table.register(description="realtime: emitted messages (no Redis)")
async def upgrade_v6(conn: Connection) -> None:
    await conn.execute(
        """CREATE TABLE emitted_event (
            event_id   TEXT PRIMARY KEY,
            emitted_at BIGINT NOT NULL
        )"""
    )
    await conn.execute("CREATE INDEX emitted_event_at ON emitted_event (emitted_at)")
