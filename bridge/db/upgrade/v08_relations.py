"""The relations index: which event edits, reacts to, replies to, threads under or redacts
which (ids and keys only, never bodies), and each room's pinned events."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from .table import upgrade_table


@upgrade_table.register(description="relations: edits, reactions, replies, threads, pins")
async def upgrade_v8(conn: Connection) -> None:
    await conn.execute(
        """CREATE TABLE relation (
            event_id  TEXT NOT NULL,
            rel_type  TEXT NOT NULL,
            room_id   TEXT NOT NULL,
            sender    TEXT NOT NULL,
            target    TEXT NOT NULL,
            key       TEXT,
            origin_ts BIGINT NOT NULL,
            parent    TEXT,
            PRIMARY KEY (event_id, rel_type)
        )"""
    )
    await conn.execute("CREATE INDEX relation_target ON relation (target, rel_type)")
    await conn.execute(
        """CREATE TABLE room_pins (
            room_id   TEXT PRIMARY KEY,
            event_ids TEXT NOT NULL
        )"""
    )
