"""A user's puppet is online while they have a socket open, plus a grace period.

The first socket sets the puppet online; after the last one closes and
``realtime.offline_grace`` passes with no new socket (in any process), the puppet goes
offline. Synapse shows an inactive user offline after about 30 s, so the puppets of
connected users are set online again every ``realtime.presence_refresh`` seconds; a sweep
in the same loop also catches users whose sockets ran out because a process died.
The process that wins a transition (atomic in the registry) announces it to sockets as
``user_online``/``user_offline``; Element users' presence comes from ``m.presence``
(ephemeral.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..db.crm_user import CrmUser, CrmUserStore
from ..matrix.client import MatrixClient
from ..tasks import stop_all
from .registry import SocketRegistry

log = logging.getLogger("bridge.realtime.presence")

Announce = Callable[[CrmUser, bool], Awaitable[None]]


class PresenceTracker:
    def __init__(
        self,
        registry: SocketRegistry,
        matrix: MatrixClient,
        users: CrmUserStore,
        announce: Announce,
        *,
        grace_s: float,
        refresh_s: float,
    ) -> None:
        self.announce = announce
        self.registry = registry
        self.matrix = matrix
        self.users = users
        self.grace_ms = int(grace_s * 1000)
        self.refresh_s = max(1.0, float(refresh_s))
        self.lease_ms = int(self.refresh_s * 3 * 1000)
        # This process's open sockets, by CRM user id.
        # An entry leaves when the user's last socket here closes.
        self.local: dict[str, set[str]] = {}
        # Presence writes in flight only (each removes itself when done).
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _set(self, crm_user_id: str, state: str, announce: bool = False) -> None:
        user = await self.users.get(crm_user_id)
        if user is None or (state == "online" and not user.active):
            return
        try:
            await self.matrix.set_presence(user.mxid, state)
        except Exception as e:
            log.warning("Cannot set %s %s: %s", user.mxid, state, e)
        if announce:
            await self.announce(user, state == "online")

    async def opened(self, crm_user_id: str, sid: str) -> None:
        self.local.setdefault(crm_user_id, set()).add(sid)
        if await self.registry.opened(crm_user_id, sid, self.lease_ms):
            self._spawn(self._set(crm_user_id, "online", announce=True))

    async def closed(self, crm_user_id: str, sid: str) -> None:
        sids = self.local.get(crm_user_id)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self.local[crm_user_id]
        await self.registry.closed(crm_user_id, sid, self.grace_ms)
        if crm_user_id not in self.local:
            # Mark the moment as the user's last activity (Matrix's last_active_ago, hence
            # lastSeen), then go offline once the grace period passed without a new socket.
            self._spawn(self._set(crm_user_id, "online"))
            self._spawn(self._after_grace(crm_user_id))

    async def _after_grace(self, crm_user_id: str) -> None:
        await asyncio.sleep(self.grace_ms / 1000 + 0.05)
        await self.release(crm_user_id)

    async def release(self, crm_user_id: str) -> None:
        if await self.registry.release(crm_user_id):
            await self._set(crm_user_id, "offline", announce=True)

    async def tick(self) -> None:
        """Renew this process's sockets, keep their puppets online, sweep expired users."""
        local = {user: set(sids) for user, sids in self.local.items()}
        await self.registry.renew(local, self.lease_ms)
        limit = asyncio.Semaphore(8)

        async def refresh(crm_user_id: str) -> None:
            async with limit:
                await self._set(crm_user_id, "online")

        await asyncio.gather(*(refresh(u) for u in local))
        for crm_user_id in await self.registry.online():
            if crm_user_id not in self.local:
                await self.release(crm_user_id)

    async def _loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Presence refresh failed")

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="realtime-presence")

    async def stop(self) -> None:
        """Cancel the loop and pending presence calls; never wait more than a few seconds
        (a cancellation swallowed deep in an HTTP client must not hang shutdown)."""
        self._stopping = True
        await stop_all([t for t in (self._loop_task, *self._tasks) if t is not None])
