"""Schema change of the intake: a digest of each handled transaction's body."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from . import upgrade_table


@upgrade_table.register(description="intake: transaction body digests")
async def upgrade_v5(conn: Connection) -> None:
    # NULL for rows recorded before: no digest matches NULL, so their ids never make a new
    # transaction look like a replay (a real replay of one of them is handled again, which
    # the handlers allow).
    await conn.execute("ALTER TABLE as_txn ADD COLUMN body_digest TEXT")
