"""The receiver lock: of the processes configured to receive transactions, exactly one does.

Any number of processes may have ``appservice.receive_transactions: true``, behind a proxy
that sends ``/_matrix/app/`` to whichever answers (deploy/nginx.conf). On PostgreSQL the one
holding a session advisory lock (key derived like the engine lock's, on a connection kept
for this alone) is the **receiver**: it handles transactions and runs the receiver's duties
(startup backfill, pull mode, the ping that ends the homeserver's backoff). The others are
**standby**: ``/_matrix/app/*`` answers 503 and they poll ``pg_try_advisory_lock`` every
``poll`` seconds. When the holder dies, PostgreSQL ends its session and releases the lock,
and a standby takes it within about one poll.

Two never both acknowledge: the receiver records each transaction (``as_txn``) on the lock
connection itself, so a holder whose session PostgreSQL ended cannot acknowledge anything
(the record fails, the transaction answers 503 and the proxy tries the next process). A
heartbeat on that connection notices a broken one within a poll and turns the process into
a standby at once. SQLite means one process: it is the receiver from the start, no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from mautrix.util.async_db import Database, Scheme

from ..db import advisory
from ..errors import ServiceUnavailable
from ..tasks import stop_all

log = logging.getLogger("bridge.matrix.receiver")


class Role(enum.StrEnum):
    FACADE = "facade"  # receive_transactions: false
    STANDBY = "standby"  # configured to receive, another process holds the lock
    RECEIVER = "receiver"


class NotReceiving(ServiceUnavailable):
    errcode = "M_STANDBY"
    default_message = "This process is a standby; another one receives the transactions"


def receiver_key(deployment: str) -> int:
    """A signed 64-bit advisory key, distinct per deployment and from the engine lock's."""
    digest = hashlib.sha256(f"crm-bridge receiver\x1f{deployment}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


Duty = Callable[[], Awaitable[object]]


class Receiver:
    """The role of this process, the lock behind it and the duties that follow the lock."""

    def __init__(
        self,
        db: Database | None,
        key: int,
        *,
        configured: bool = True,
        poll: float = 1.0,
        heartbeat_timeout: float = 5.0,
    ) -> None:
        self.db, self.key, self.poll = db, key, poll
        self.heartbeat_timeout = heartbeat_timeout
        self.role = Role.STANDBY if configured else Role.FACADE
        # Set once the HTTP server listens (the ping makes the homeserver call us back).
        self.listening = asyncio.Event()
        self._hooks: list[Callable[[], None]] = []
        self._duties: list[tuple[str, Duty]] = []
        self._running: list[asyncio.Task[object]] = []
        self._held: AsyncExitStack | None = None
        self._conn: Any = None
        self._use = asyncio.Lock()  # one query at a time on the lock connection
        self._loop: asyncio.Task[None] | None = None
        self._losing: asyncio.Task[None] | None = None

    @property
    def shared(self) -> bool:
        return self.db is not None and self.db.scheme in (Scheme.POSTGRES, Scheme.COCKROACH)

    def on_acquired(self, hook: Callable[[], None]) -> None:
        """Run (synchronously) each time this process becomes the receiver, before the
        first transaction it answers: state another holder may have moved on."""
        self._hooks.append(hook)

    def duty(self, name: str, start: Duty) -> None:
        """A background task run while this process is the receiver, cancelled on loss."""
        self._duties.append((name, start))

    def check(self) -> None:
        if self.role is not Role.RECEIVER:
            raise NotReceiving(headers={"Retry-After": "1"})

    async def start(self) -> None:
        if self.role is Role.FACADE:
            return
        if not self.shared:
            self._become_receiver(takeover=False)
            return
        if not await self._try_acquire(takeover=False):
            log.warning(
                "Another process holds the receiver lock: this one is standby and answers "
                "/_matrix/app with 503 until it takes over"
            )
        self._loop = asyncio.create_task(self._watch(), name="receiver-lock")

    async def close(self) -> None:
        if self._loop is not None:
            await stop_all([self._loop])
        await self._lose("shutting down", quiet=True)

    @contextlib.asynccontextmanager
    async def fenced(self) -> AsyncIterator[Any]:
        """The lock connection, for the write that acknowledges a transaction; None on
        SQLite. Raises NotReceiving if this process is not (or stops being) the receiver."""
        self.check()
        if not self.shared:
            yield None
            return
        async with self._use:
            self.check()
            try:
                yield self._conn
            except Exception as e:
                if self._conn is None or self._conn.wrapped.is_closed():
                    await self._lose(f"its lock connection failed ({type(e).__name__})")
                    raise NotReceiving(headers={"Retry-After": "1"}) from e
                raise

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            try:
                if self.role is Role.RECEIVER:
                    await self._heartbeat()
                else:
                    await self._try_acquire()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the database is away: stay standby, look again
                log.debug("Receiver lock check failed: %s", e)

    async def _try_acquire(self, takeover: bool = True) -> bool:
        assert self.db is not None
        stack = AsyncExitStack()
        try:
            conn = await stack.enter_async_context(self.db.acquire_direct())
            got = await advisory.try_lock(conn, self.key)
        except BaseException:
            await stack.aclose()
            raise
        if not got:
            await stack.aclose()
            return False
        self._held, self._conn = stack, conn
        # A connection PostgreSQL or the network closes: stop answering at once, not at
        # the next heartbeat.
        with contextlib.suppress(Exception):
            conn.wrapped.add_termination_listener(lambda *_: self._closed_under_us())
        self._become_receiver(takeover)
        return True

    def _closed_under_us(self) -> None:
        if self.role is Role.RECEIVER:
            self.role = Role.STANDBY
            log.warning("The receiver lock connection closed: standby from now on")
            self._losing = asyncio.get_running_loop().create_task(self._lose("connection closed"))

    async def _heartbeat(self) -> None:
        async with self._use:
            conn = self._conn
            try:
                if conn is None:
                    raise ConnectionError("no lock connection")
                await asyncio.wait_for(advisory.alive(conn), self.heartbeat_timeout)
                return
            except (TimeoutError, Exception) as e:
                reason = f"its lock connection failed ({type(e).__name__})"
        await self._lose(reason)

    def _become_receiver(self, takeover: bool) -> None:
        for hook in self._hooks:
            hook()
        self.role = Role.RECEIVER
        if takeover:
            log.warning("Took the receiver lock over: this process receives the transactions")
        elif self.shared:
            log.info("Holding the receiver lock: this process receives the transactions")
        self._running = [
            asyncio.create_task(start(), name=f"receiver-{name}") for name, start in self._duties
        ]

    async def _lose(self, reason: str, quiet: bool = False) -> None:
        was = self.role
        if was is Role.RECEIVER:
            self.role = Role.STANDBY
        running, self._running = self._running, []
        held, conn, self._held, self._conn = self._held, self._conn, None, None
        if was is Role.RECEIVER and not quiet:
            log.warning("Lost the receiver lock (%s): standby from now on", reason)
        if held is not None:
            # End the session, and the lock with it, rather than unlock on a connection
            # that may hang: a standby must be able to take the lock at once.
            with contextlib.suppress(Exception):
                conn.wrapped.terminate()
            with contextlib.suppress(Exception):
                await held.aclose()
        await stop_all(running)
