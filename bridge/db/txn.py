"""Appservice transactions already handled (table ``as_txn``), each with a digest of its body.

The id alone does not name a transaction: Synapse on SQLite numbers them from 1 again after
every restart, and a homeserver restored from a backup repeats ids too. A recorded id is a
replay only if the body digest matches as well.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from mautrix.util.async_db import Database

# Fields the homeserver computes anew for each attempt: a retry of the same transaction
# carries a different ``age`` (Synapse puts it both at the top level and in ``unsigned``).
_PER_ATTEMPT_FIELDS = ("age", "unsigned")


def body_digest(body: dict[str, Any]) -> str:
    """sha256 of the transaction body in canonical JSON, without the per-attempt fields."""
    events = body.get("events")
    if isinstance(events, list):
        stripped = [
            {k: v for k, v in e.items() if k not in _PER_ATTEMPT_FIELDS}
            if isinstance(e, dict)
            else e
            for e in events
        ]
        body = {**body, "events": stripped}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class TransactionLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def digest_of(self, txn_id: str) -> str | None:
        """The digest recorded with this id; None if the id is unknown or predates digests."""
        return await self.db.fetchval("SELECT body_digest FROM as_txn WHERE txn_id=$1", txn_id)

    async def record(self, txn_id: str, digest: str, event_count: int) -> None:
        # A reused id replaces the old row: the homeserver no longer knows the old transaction.
        await self.db.execute(
            "INSERT INTO as_txn (txn_id, body_digest, event_count, processed_at) "
            "VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (txn_id) DO UPDATE SET body_digest=excluded.body_digest, "
            "event_count=excluded.event_count, processed_at=excluded.processed_at",
            txn_id,
            digest,
            event_count,
            int(time.time() * 1000),
        )

    async def prune(self, keep_days: int = 7) -> None:
        """Forget old ids: the homeserver only ever replays a transaction it is still retrying."""
        cutoff = int((time.time() - keep_days * 86400) * 1000)
        await self.db.execute("DELETE FROM as_txn WHERE processed_at < $1", cutoff)

    async def count(self) -> int:
        return await self.db.fetchval("SELECT COUNT(*) FROM as_txn")
