"""The bridge's own database: indexes and caches, never a copy of the history."""

from __future__ import annotations

import logging
from typing import Any

from mautrix.util.async_db import Database

from .upgrade import upgrade_table


def create_database(url: str, args: dict[str, Any] | None = None) -> Database:
    """``sqlite:<path>`` (embedded) or ``postgres://...``, with our migrations attached."""
    return Database.create(
        url,
        upgrade_table=upgrade_table,
        db_args=dict(args or {}),
        log=logging.getLogger("bridge.db"),
        owner_name="crm-bridge",
    )
