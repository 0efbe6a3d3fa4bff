"""A lock per (purpose, room) shared by every process of a deployment on PostgreSQL.

For read-modify-writes of a room's state that two facade processes could interleave (the
pinned events list). Held on one pooled connection for the duration, as a session advisory
lock; a connection that dies releases it. On SQLite (one process) the caller's in-memory
lock is the whole story, so ``hold`` only yields.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mautrix.util.async_db import Database, Scheme

from . import advisory


def room_key(purpose: str, room_id: str) -> int:
    digest = hashlib.sha256(f"crm-bridge {purpose}\x1f{room_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@asynccontextmanager
async def hold(db: Database, purpose: str, room_id: str) -> AsyncIterator[None]:
    if db.scheme not in (Scheme.POSTGRES, Scheme.COCKROACH):
        yield
        return
    key = room_key(purpose, room_id)
    async with db.acquire_direct() as conn:
        # Waits in the server while another process holds it; a cancelled wait ends the
        # session (advisory.py), which releases whatever it held.
        await advisory.lock(conn, key)
        try:
            yield
        finally:
            await advisory.unlock(conn, key)
