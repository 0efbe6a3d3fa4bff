"""The real-time side's parts, opened with the app and closed with it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import socketio
from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..config import Config
from ..context import CONFIG, DATABASE, MATRIX, REDIS_STATE, REVOCATIONS, USERS
from ..db.announced_receipt import AnnouncedReceiptStore
from ..db.crm_user import CrmUser
from ..db.published_mark import PublishedMarkStore
from ..presence_board import PRESENCE_BOARD
from .access import Access
from .ephemeral import Relays
from .fanout import Fanout
from .log import CHANGE_KIND, LOG_KIND, DeliveryLog
from .presence import PresenceTracker
from .pump import Lanes
from .registry import FallbackRegistry, MemoryRegistry, RedisRegistry, SocketRegistry
from .server import redis_prefix, start_manager, stop_manager
from .transport import BridgeRedisManager
from .typing import TypingThrottle


@dataclass
class Realtime:
    sio: socketio.AsyncServer
    log: DeliveryLog
    registry: SocketRegistry
    presence: PresenceTracker
    fanout: Fanout
    relays: Relays
    # Messages, typing, receipts and presence, in order per conversation (a lane per room;
    # presence per user); then slower follow-ups, per conversation too.
    live: Lanes
    slow: Lanes

    async def close(self, timeout: float = 3.0) -> None:
        """Shutdown: what the transactions brought is emitted or resynced within
        ``timeout``; the log's rows left undelivered are in the index, for the next
        process's gap announcement."""
        try:
            await asyncio.wait_for(self.live.drain(), timeout)
        except TimeoutError:
            # Never silence: those conversations' sockets (on every process) refetch.
            for key in self.live.pending():
                with contextlib.suppress(Exception):
                    await self.fanout.resync(key, "timeout")
        await self.live.stop()
        await self.log.close(timeout=1.0)
        await self.slow.stop()

    async def drain(self) -> None:
        await self.live.drain()
        await self.log.lanes.drain()
        await self.slow.drain()


SIO = web.AppKey("sio", socketio.AsyncServer)
REALTIME = web.AppKey("realtime", Realtime)
PRESENCE = web.AppKey("realtime_presence", PresenceTracker)
ACCESS = web.AppKey("realtime_access", Access)
TYPING = web.AppKey("realtime_typing", TypingThrottle)


@contextlib.asynccontextmanager
async def _redis(url: str | None) -> AsyncIterator[Redis | None]:
    if not url:
        yield None
        return
    # A blocking pool: a burst (hundreds of sockets closing at once) waits for a connection
    # instead of failing with "Too many connections".
    # Fail fast while Redis is away (redis-py's default retries back off for seconds): the
    # stores then fall back to memory (bridge/redis_state.py).
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=64,
        timeout=20,
        socket_connect_timeout=2,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 1),
    )
    client = Redis(connection_pool=pool)
    try:
        yield client
    finally:
        await client.aclose()
        await pool.disconnect()


def lanes(
    name: str, config: Config, on_drop: Callable[[str, str], Any], job_timeout: float = 15.0
) -> Lanes:
    return Lanes(
        name,
        job_timeout=job_timeout,
        per_lane=int(config.get("realtime.lane_size", 1000)),
        max_queued=int(config.get("realtime.queue_size", 20000)),
        lookup_timeout=float(config.get("realtime.lookup_timeout", 2)),
        on_drop=on_drop,
    )


def context(app: web.Application):
    async def realtime_ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        sio = app[SIO]
        async with _redis(config.get("redis.url")) as redis:
            prefix = redis_prefix(config)
            state = app.get(REDIS_STATE)
            registry: SocketRegistry
            if redis is not None and state is not None:
                registry = FallbackRegistry(RedisRegistry(redis, prefix), state)
            else:
                registry = MemoryRegistry()
            # Each process delivers the log to its own sockets; what it cannot, it resyncs
            # here (its sockets only).
            deliveries = Lanes(
                "deliver",
                per_lane=int(config.get("realtime.lane_size", 1000)),
                max_queued=int(config.get("realtime.queue_size", 20000)),
                lookup_timeout=float(config.get("realtime.lookup_timeout", 2)),
            )
            delivery_log = DeliveryLog(
                app, sio, PublishedMarkStore(app[DATABASE]), deliveries, app[ACCESS].sockets
            )
            deliveries.on_drop = delivery_log.resync
            sio.manager.handlers[LOG_KIND] = delivery_log.arrived
            sio.manager.handlers[CHANGE_KIND] = delivery_log.change_arrived
            if isinstance(sio.manager, BridgeRedisManager):
                sio.manager.on_sockets_dropped.append(delivery_log.forget_delivered)
            relays = Relays(app, sio, AnnouncedReceiptStore(app[DATABASE]))

            async def transition(user: CrmUser, online: bool) -> None:
                # The directory's presence board asks Matrix again after a transition.
                if (board := app.get(PRESENCE_BOARD)) is not None:
                    await board.forget(user.mxid)
                await relays.announce_user(user, online)

            presence = PresenceTracker(
                registry,
                app[MATRIX],
                app[USERS],
                transition,
                grace_s=float(config["realtime.offline_grace"]),
                refresh_s=float(config.get("realtime.presence_refresh", 20)),
            )
            fanout = Fanout(app, sio, delivery_log, registry, app[ACCESS])
            realtime = Realtime(
                sio=sio,
                log=delivery_log,
                registry=registry,
                presence=presence,
                fanout=fanout,
                relays=relays,
                live=lanes("live", config, fanout.resync),
                # A membership change lists the conversation once per participant.
                slow=lanes("slow", config, fanout.resync, job_timeout=60.0),
            )
            app[REALTIME] = realtime
            app[PRESENCE] = presence
            app[TYPING] = TypingThrottle(
                app[MATRIX],
                int(config["realtime.typing_timeout_ms"]),
                float(config.get("realtime.typing_interval", 3)),
            )
            revocations = app[REVOCATIONS]
            revocations.on_member_left.append(app[ACCESS].member_left)
            revocations.on_user_deactivated.append(app[ACCESS].deactivate)
            revocations.on_company_left.append(app[ACCESS].company_left)
            start_manager(sio)
            presence.start()
            try:
                yield
            finally:
                revocations.on_member_left.remove(app[ACCESS].member_left)
                revocations.on_user_deactivated.remove(app[ACCESS].deactivate)
                revocations.on_company_left.remove(app[ACCESS].company_left)
                await app[TYPING].close()
                await presence.stop()
                await realtime.close()
                await stop_manager(sio)

    return realtime_ctx
