"""Whether a relation's change went out on the socket (a redelivered transaction: once)."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from .table import upgrade_table


@upgrade_table.register(description="relations: announced once")
async def upgrade_v16(conn: Connection) -> None:
    # Rows from before were announced when they were handled: 1. New rows start at 0.
    await conn.execute("ALTER TABLE relation ADD COLUMN announced INTEGER NOT NULL DEFAULT 1")
