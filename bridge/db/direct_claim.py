"""Who is creating the DM of a pair right now (table ``direct_claim``).

A request claims the pair before it creates the room, so of two simultaneous requests
(in one process or two) only one ever calls createRoom. The claim names the room as soon
as the homeserver returned it, and goes once the conversation row exists. A claim whose
holder vanished (a crash) expires after a lease and is taken over.
"""

from __future__ import annotations

from dataclasses import dataclass

from mautrix.util.async_db import Database

from .receipt import _rows_changed

COLUMNS = "direct_key, token, claimed_at, room_id"


@dataclass
class DirectClaim:
    direct_key: str
    token: str
    claimed_at: int
    room_id: str | None = None


class DirectClaimStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(self, key: str, token: str, now: int) -> DirectClaim | None:
        """Claim the pair; returns the claim that holds it (ours when its token is ours).
        None when the claim vanished between our insert and our read (try again)."""
        await self.db.execute(
            f"INSERT INTO direct_claim ({COLUMNS}) VALUES ($1, $2, $3, NULL) "
            "ON CONFLICT (direct_key) DO NOTHING",
            key, token, now,
        )  # fmt: skip
        row = await self.db.fetchrow(f"SELECT {COLUMNS} FROM direct_claim WHERE direct_key=$1", key)
        return DirectClaim(**row) if row else None

    async def take_over(self, key: str, old_token: str, token: str, now: int) -> bool:
        """Replace an expired claim with ours; False when someone else was quicker."""
        result = await self.db.execute(
            "UPDATE direct_claim SET token=$3, claimed_at=$4 WHERE direct_key=$1 AND token=$2",
            key, old_token, token, now,
        )  # fmt: skip
        return _rows_changed(result) > 0

    async def set_room(self, key: str, token: str, room_id: str) -> None:
        await self.db.execute(
            "UPDATE direct_claim SET room_id=$3 WHERE direct_key=$1 AND token=$2",
            key, token, room_id,
        )  # fmt: skip

    async def expire(self, key: str, token: str) -> None:
        """Let the next request take over at once (we may have created a room, or not)."""
        await self.db.execute(
            "UPDATE direct_claim SET claimed_at=0 WHERE direct_key=$1 AND token=$2", key, token
        )

    async def release(self, key: str, token: str) -> None:
        await self.db.execute(
            "DELETE FROM direct_claim WHERE direct_key=$1 AND token=$2", key, token
        )
