"""The bridge's own database: indexes and caches, never a copy of the history."""

from __future__ import annotations

import logging
from typing import Any

from mautrix.util.async_db import Database

from .upgrade import upgrade_table


async def keep_session(conn: Any) -> None:
    """What a pooled connection needs between uses: nothing beyond asyncpg's own rollback of
    an open transaction. asyncpg's default reset (``RESET ALL``, ``UNLISTEN *``, ...) is one
    more round trip per query, ~6 per history page, for session state the bridge never
    leaves behind: no SET, LISTEN or cursors, and its one session lock (crm/engine_lock.py)
    is released by its holder or dies with a terminated connection."""


def create_database(url: str, args: dict[str, Any] | None = None) -> Database:
    """``sqlite:<path>`` (embedded) or ``postgres://...``, with our migrations attached."""
    db_args = dict(args or {})
    if url.startswith(("postgres://", "postgresql://")):
        # mautrix exits the process on asyncpg's InternalClientError, which a connection
        # the server dropped (PostgreSQL restarting) can raise before the pool notices it is
        # closed. The pool terminates such a connection when it is released; the request
        # answers 503 (bridge/errors.py) and the next one gets a fresh connection.
        db_args.setdefault("meow_exit_on_ice", False)
        db_args.setdefault("reset", keep_session)
    return Database.create(
        url,
        upgrade_table=upgrade_table,
        db_args=db_args,
        log=logging.getLogger("bridge.db"),
        owner_name="crm-bridge",
    )


async def owner_of(db: Database) -> str | None:
    """Which program's database this is (mautrix's ``database_owner``)."""
    return await db.fetchval("SELECT owner FROM database_owner WHERE key=0")


async def schema_version(db: Database, version_table: str) -> int:
    return int(await db.fetchval(f"SELECT version FROM {version_table}") or 0)
