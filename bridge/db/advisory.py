"""PostgreSQL session advisory locks, on a connection the caller holds."""

from __future__ import annotations

from typing import Any


async def try_lock(conn: Any, key: int) -> bool:
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))


async def lock(conn: Any, key: int) -> None:
    """Waits in the server while another session holds it."""
    await conn.execute("SELECT pg_advisory_lock($1)", key)


async def unlock(conn: Any, key: int) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", key)
