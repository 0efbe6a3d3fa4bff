"""The transaction log by time: a new receiver reads the ids handled last (gaps.py)."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from .table import upgrade_table


@upgrade_table.register(description="as_txn by processed_at")
async def upgrade_v17(conn: Connection) -> None:
    # A takeover reads the newest rows, and pruning deletes the oldest: both by time.
    await conn.execute("CREATE INDEX as_txn_processed_at ON as_txn (processed_at)")
