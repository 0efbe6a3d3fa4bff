"""Guests from other homeservers on CRM projects."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from .table import upgrade_table


@upgrade_table.register(description="crm: project guests from other homeservers")
async def upgrade_v14(conn: Connection) -> None:
    # A JSON list of mxids: read with the project, never queried by guest.
    await conn.execute("ALTER TABLE project ADD COLUMN guests TEXT NOT NULL DEFAULT '[]'")
