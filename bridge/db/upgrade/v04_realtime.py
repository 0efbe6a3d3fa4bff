"""Schema changes of the realtime side (reserved; nothing has shipped yet, so it may change)."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from . import upgrade_table


@upgrade_table.register(description="realtime schema additions")
async def upgrade_v4(conn: Connection) -> None:
    """No changes yet."""
