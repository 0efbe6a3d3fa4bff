"""Messages the real-time side emitted (table ``emitted_event``): exactly once, restarts too."""

from __future__ import annotations

from mautrix.util.async_db import Database


class EmittedEventStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(self, event_id: str, now_ms: int) -> bool:
        """True for the first claim of an event id, False for every later one."""
        inserted = await self.db.fetchval(
            "INSERT INTO emitted_event (event_id, emitted_at) VALUES ($1, $2) "
            "ON CONFLICT (event_id) DO NOTHING RETURNING 1",
            event_id, now_ms,
        )  # fmt: skip
        return inserted is not None

    async def forget_before(self, cutoff_ms: int) -> None:
        await self.db.execute("DELETE FROM emitted_event WHERE emitted_at < $1", cutoff_ms)
