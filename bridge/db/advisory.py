"""PostgreSQL session advisory locks, on a connection the caller holds.

The pool does not clear session state between uses (``keep_session`` in __init__.py), so a
call that fails or is cancelled midway ends the session: a lock it may have left held dies
with the connection instead of going back to the pool.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def _or_end_session(conn: Any, call: Awaitable[T]) -> T:
    try:
        return await call
    except BaseException:
        getattr(conn, "wrapped", conn).terminate()  # mautrix's wrapper, or asyncpg's own
        raise


async def try_lock(conn: Any, key: int) -> bool:
    return bool(await _or_end_session(conn, conn.fetchval("SELECT pg_try_advisory_lock($1)", key)))


async def lock(conn: Any, key: int) -> None:
    """Waits in the server while another session holds it."""
    await _or_end_session(conn, conn.execute("SELECT pg_advisory_lock($1)", key))


async def alive(conn: Any) -> None:
    """A round trip on the session that holds a lock: raises if the session is gone."""
    await _or_end_session(conn, conn.fetchval("SELECT 1"))


async def unlock(conn: Any, key: int) -> None:
    await _or_end_session(conn, conn.execute("SELECT pg_advisory_unlock($1)", key))
