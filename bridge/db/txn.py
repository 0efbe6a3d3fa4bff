"""Appservice transactions already handled (table ``as_txn``)."""

from __future__ import annotations

import time

from mautrix.util.async_db import Database


class TransactionLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def seen(self, txn_id: str) -> bool:
        row = await self.db.fetchval("SELECT 1 FROM as_txn WHERE txn_id=$1", txn_id)
        return row is not None

    async def record(self, txn_id: str, event_count: int) -> None:
        await self.db.execute(
            "INSERT INTO as_txn (txn_id, event_count, processed_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (txn_id) DO NOTHING",
            txn_id,
            event_count,
            int(time.time() * 1000),
        )

    async def prune(self, keep_days: int = 7) -> None:
        """Forget old ids: the homeserver only ever replays a transaction it is still retrying."""
        cutoff = int((time.time() - keep_days * 86400) * 1000)
        await self.db.execute("DELETE FROM as_txn WHERE processed_at < $1", cutoff)

    async def count(self) -> int:
        return await self.db.fetchval("SELECT COUNT(*) FROM as_txn")
