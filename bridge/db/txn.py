"""Appservice transactions already handled (table ``as_txn``), with digests of their content.

The id alone does not name a transaction: Synapse on SQLite numbers them from 1 again after
every restart, and a homeserver restored from a backup repeats ids too. Intake takes a
recorded id for a replay only if the content matches as well (``TxnDigest.replayed_by``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from mautrix.util.async_db import Database

# Fields the homeserver computes anew for each attempt: a retry of the same transaction
# carries a different ``age`` (Synapse puts it both at the top level and in ``unsigned``).
_PER_ATTEMPT_FIELDS = ("age", "unsigned")


def _sha256(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class TxnDigest:
    body: str  # the whole body
    events: str  # its timeline events alone

    @classmethod
    def of(cls, body: dict[str, Any]) -> TxnDigest:
        """sha256 of canonical JSON, the per-attempt fields of each event left out."""
        events = body.get("events")
        if isinstance(events, list):
            events = [
                {k: v for k, v in e.items() if k not in _PER_ATTEMPT_FIELDS}
                if isinstance(e, dict)
                else e
                for e in events
            ]
            body = {**body, "events": events}
        return cls(body=_sha256(body), events=_sha256(events))

    def replayed_by(self, new: TxnDigest, has_ephemeral: bool) -> bool:
        """Whether ``new``, under the same id, is this transaction sent again. Synapse resends
        a failed transaction from its database, with the timeline events but without the
        ephemeral ones (it never stored those)."""
        return self.body == new.body or (not has_ephemeral and self.events == new.events)


class TransactionLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, txn_id: str) -> TxnDigest | None:
        """What was recorded with this id; None if unknown or recorded before digests were."""
        row = await self.db.fetchrow(
            "SELECT body_digest, events_digest FROM as_txn WHERE txn_id=$1", txn_id
        )
        if row is None or row["body_digest"] is None or row["events_digest"] is None:
            return None
        return TxnDigest(body=row["body_digest"], events=row["events_digest"])

    async def recent_ids(self, limit: int) -> list[str]:
        """The ``limit`` ids handled most recently, newest first (by time; within one
        millisecond the higher number came last)."""
        rows = await self.db.fetch(
            "SELECT txn_id FROM as_txn "
            "ORDER BY processed_at DESC, LENGTH(txn_id) DESC, txn_id DESC LIMIT $1",
            limit,
        )
        return [row["txn_id"] for row in rows]

    async def record(
        self, txn_id: str, digest: TxnDigest, event_count: int, conn: Any = None
    ) -> None:
        """``conn``: the receiver lock's connection (matrix/receiver.py), so that a process
        whose lock session ended cannot record, and so cannot acknowledge."""
        # A reused id replaces the old row: the homeserver no longer knows the old transaction.
        await (conn or self.db).execute(
            "INSERT INTO as_txn (txn_id, body_digest, events_digest, event_count, processed_at) "
            "VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (txn_id) DO UPDATE SET body_digest=excluded.body_digest, "
            "events_digest=excluded.events_digest, event_count=excluded.event_count, "
            "processed_at=excluded.processed_at",
            txn_id,
            digest.body,
            digest.events,
            event_count,
            int(time.time() * 1000),
        )

    async def prune(self, keep_days: int = 7) -> None:
        """Forget old ids: the homeserver only ever replays a transaction it is still retrying."""
        cutoff = int((time.time() - keep_days * 86400) * 1000)
        await self.db.execute("DELETE FROM as_txn WHERE processed_at < $1", cutoff)

    async def count(self) -> int:
        return await self.db.fetchval("SELECT COUNT(*) FROM as_txn")
