"""Schema changes of the crm side."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from .table import upgrade_table


@upgrade_table.register(description="Directory: presence applied to deactivated puppets")
async def upgrade_v2(conn: Connection) -> None:
    # 'offline' once a deactivated user's puppet was set offline, so re-syncs skip it.
    await conn.execute("ALTER TABLE crm_user ADD COLUMN applied_presence TEXT")
