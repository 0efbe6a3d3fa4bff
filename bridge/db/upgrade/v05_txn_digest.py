"""Schema change of the intake: digests of each handled transaction's content."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from .table import upgrade_table


@upgrade_table.register(description="intake: transaction body digests")
async def upgrade_v5(conn: Connection) -> None:
    # NULL for rows recorded before: a row without digests matches nothing, so its id never
    # makes a new transaction look like a replay (a real replay of one is handled again,
    # which the handlers allow).
    await conn.execute("ALTER TABLE as_txn ADD COLUMN body_digest TEXT")
    await conn.execute("ALTER TABLE as_txn ADD COLUMN events_digest TEXT")
