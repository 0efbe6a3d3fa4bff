"""The engine lock: one directory operation at a time in the whole deployment.

Admin calls, CLI syncs, pull mode and drift repairs can reach any process behind the load
balancer. In this process they queue on an ``asyncio.Lock``; on PostgreSQL the holder also
takes a session advisory lock, held on one pooled connection for the whole operation, so
two processes never plan or apply at once. SQLite means one process, so the asyncio lock
is all there is.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from contextlib import AsyncExitStack
from types import TracebackType

from mautrix.util.async_db import Database, Scheme

from ..config import Config, redis_prefix
from ..db import advisory


def deployment_of(config: Config) -> str:
    """One bridge database is one deployment: its processes share the lock, while another
    bridge on the same PostgreSQL server (another schema) has a lock of its own."""
    args = config.get("database.args") or {}
    settings = args.get("server_settings") if isinstance(args, dict) else None
    schema = settings.get("search_path", "") if isinstance(settings, dict) else ""
    return f"{redis_prefix(config)}\x1f{config['database.url']}\x1f{schema}"


def advisory_key(deployment: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock``, distinct per deployment."""
    digest = hashlib.sha256(f"crm-bridge engine\x1f{deployment}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class EngineLock:
    def __init__(self, db: Database | None, deployment: str) -> None:
        self.db = db
        self.key = advisory_key(deployment)
        self._local = asyncio.Lock()
        self._held: AsyncExitStack | None = None

    @property
    def shared(self) -> bool:
        return self.db is not None and self.db.scheme in (Scheme.POSTGRES, Scheme.COCKROACH)

    def locked(self) -> bool:
        """Held by an operation of this process."""
        return self._local.locked()

    async def busy(self) -> bool:
        """Held by an operation of any process of the deployment."""
        if self._local.locked() or not self.shared:
            return self._local.locked()
        assert self.db is not None
        async with self.db.acquire_direct() as conn:
            if not await advisory.try_lock(conn, self.key):
                return True
            await advisory.unlock(conn, self.key)
            return False

    async def __aenter__(self) -> EngineLock:
        await self._local.acquire()
        try:
            if self.shared:
                assert self.db is not None
                stack = AsyncExitStack()
                conn = await stack.enter_async_context(self.db.acquire_direct())
                try:
                    # Waits in the server while another process holds it; a cancelled wait
                    # cancels the query, and a dropped connection releases the lock.
                    await advisory.lock(conn, self.key)
                except BaseException:
                    await stack.aclose()
                    raise
                stack.push_async_callback(advisory.unlock, conn, self.key)
                self._held = stack
        except BaseException:
            self._local.release()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        held, self._held = self._held, None
        try:
            if held is not None:
                # A connection that died has released the lock with it.
                with contextlib.suppress(Exception):
                    await held.aclose()
        finally:
            self._local.release()
