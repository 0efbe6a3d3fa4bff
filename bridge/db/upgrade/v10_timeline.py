"""One order for reading: each indexed event's position in the homeserver's timeline.

``room_event.pos`` is where the event sits in Synapse's stream order (the order of its
appservice transactions), as far as the bridge knows it: final once a transaction brought
the event, provisional (above every final one) while only the send path has indexed it.
Receipts, announced receipts and clear points hold positions from now on, in place of the
live order's ``seq`` (db/room_event.py, docs/api.md "Order").
"""

from __future__ import annotations

from mautrix.util.async_db import Connection, Scheme

from .table import upgrade_table


@upgrade_table.register(description="read order: timeline positions of indexed events")
async def upgrade_v10(conn: Connection, scheme: Scheme) -> None:
    # Rows indexed so far keep their live order as their position: it was the order used.
    await conn.execute("ALTER TABLE room_event ADD COLUMN pos BIGINT NOT NULL DEFAULT 0")
    await conn.execute("UPDATE room_event SET pos = seq")
    await conn.execute("CREATE INDEX room_event_room_pos ON room_event (room_id, pos)")
    if scheme in (Scheme.POSTGRES, Scheme.COCKROACH):
        # Positions are drawn in the order transactions are handled (SQLite: per room, MAX+1
        # under its single writer).
        await conn.execute("CREATE SEQUENCE room_event_pos")
        await conn.execute(
            "SELECT setval('room_event_pos', (SELECT COALESCE(MAX(seq), 0) + 1 FROM room_event),"
            " false)"
        )
    for table in ("receipt", "announced_receipt", "cleared_history"):
        await conn.execute(f"ALTER TABLE {table} RENAME COLUMN seq TO pos")
    # The announced position follows its event when that event's position becomes final.
    await conn.execute("ALTER TABLE announced_receipt ADD COLUMN event_id TEXT")
