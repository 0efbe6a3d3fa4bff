"""Message bodies dropped from every process's cache: ``await invalidate(app, event_id)``.

The intake process learns of a redaction (or an edit) from a transaction; facade processes
hold their own in-memory body caches (``EventCache``). ``invalidate`` drops the body here
and publishes the event id on the deployment's Redis channel; every process drops it on
receipt. While a process is not subscribed (Redis down, or not yet up) it may miss
invalidations, so its cache is bypassed (every read goes to the homeserver or the index)
and emptied once it is subscribed again. Without Redis there is one process and the local
drop is all there is.

A publish that fails is not only logged: the ids are kept (at most ``_UNSENT_CAP``; past
that, a ``*`` that empties every cache is sent instead) and published again as soon as the
subscription is back, which the failure tears down and rebuilds. Until then the process is
``degraded`` (readiness says so, bridge/health.py) and bypasses its own cache, as it would
for any lost subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..config import redis_prefix
from ..context import CONFIG
from ..redis_state import REDIS_ERRORS
from ..tasks import stop
from .service import CHAT

log = logging.getLogger("bridge.chat.invalidation")

BUS = web.AppKey("body_cache_bus", object)
_RETRY = (0.25, 2.0)
# Invalidations kept for a publish that failed; past this, every cache is emptied instead.
_UNSENT_CAP = 10000
_EVERYTHING = "*"


class InvalidationBus:
    def __init__(self, app: web.Application, url: str, prefix: str) -> None:
        self.app = app
        self.channel = f"{prefix}:body-invalidate"
        # No silent reconnects: a resubscription redis-py made on its own would hide the
        # invalidations published in between.
        self.redis = Redis.from_url(
            url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
        )
        self.subscribed = asyncio.Event()
        # Ids whose publish failed, in order (a dict as an ordered set), bounded by
        # _UNSENT_CAP; ``_overflowed``: more were lost than kept, so send _EVERYTHING.
        self._unsent: dict[str, None] = {}
        self._overflowed = False
        self._reconnect = asyncio.Event()

    @property
    def degraded(self) -> bool:
        """Not subscribed, or holding invalidations that other processes have not had."""
        return not self.subscribed.is_set() or bool(self._unsent) or self._overflowed

    def _bypass(self, on: bool) -> None:
        cache = self.app[CHAT].events
        if on and not cache.bypass:
            log.warning("Body cache bypassed: not subscribed to invalidations")
        if not on and cache.bypass:
            cache.clear()  # what was missed meanwhile is unknown
            log.info("Body cache in use again (subscribed to invalidations)")
        cache.bypass = on

    def _keep(self, event_id: str) -> None:
        if len(self._unsent) >= _UNSENT_CAP:
            self._unsent.clear()
            self._overflowed = True
        if not self._overflowed:
            self._unsent[event_id] = None

    async def publish(self, event_id: str) -> None:
        if not self.subscribed.is_set():
            # Our Redis link is being rebuilt: sent once it is (no 2 s timeout per redaction).
            self._keep(event_id)
            return
        try:
            await self.redis.publish(self.channel, event_id)
        except REDIS_ERRORS as e:
            # Other processes may still be subscribed, and serve the body until they hear.
            log.warning("Cannot publish the invalidation of %s (kept, sent again): %s", event_id, e)
            self._keep(event_id)
            self._lost()

    def _lost(self) -> None:
        """Our link to Redis failed: degraded, cache bypassed, subscription rebuilt."""
        self.subscribed.clear()
        self._bypass(True)
        self._reconnect.set()

    async def _send_unsent(self) -> None:
        """Publish what failed before (in one pipeline); raises if Redis fails again."""
        if not self._unsent and not self._overflowed:
            return
        ids = [_EVERYTHING] if self._overflowed else list(self._unsent)
        async with self.redis.pipeline(transaction=False) as pipe:
            for event_id in ids:
                pipe.publish(self.channel, event_id)
            await pipe.execute()
        self._overflowed = False
        for event_id in ids:
            self._unsent.pop(event_id, None)
        log.warning("Published %d invalidations kept while Redis failed", len(ids))

    def _received(self, event_id: str) -> None:
        if event_id == _EVERYTHING:
            self.app[CHAT].events.clear()
        else:
            self.app[CHAT].events.drop(event_id)

    async def run(self) -> None:
        delay = _RETRY[0]
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                self._reconnect.clear()
                await pubsub.subscribe(self.channel)
                await self._send_unsent()
                self._bypass(False)
                self.subscribed.set()
                delay = _RETRY[0]
                while not self._reconnect.is_set():
                    if self._unsent or self._overflowed:
                        await self._send_unsent()  # kept while the first send was on its way
                    message = await pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        data = message["data"]
                        self._received(data.decode() if isinstance(data, bytes) else str(data))
                    elif message is None:
                        await pubsub.ping()  # notice a dead connection while idle
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as e:
                self._lost()
                log.debug("Invalidation subscription lost: %s", e)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY[1])


async def invalidate(app: web.Application, event_id: str) -> None:
    """Drop a message body from the caches of every process of the deployment."""
    app[CHAT].events.drop(event_id)
    bus = app.get(BUS)
    if isinstance(bus, InvalidationBus):
        await bus.publish(event_id)


def setup(app: web.Application) -> None:
    async def bus_ctx(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        url = config.get("redis.url")
        if not url:
            yield
            return
        bus = InvalidationBus(app, url, redis_prefix(config))
        app[BUS] = bus
        # Until the first subscription, invalidations could be missed: bypass.
        app[CHAT].events.bypass = True
        task = asyncio.create_task(bus.run(), name="body-cache-invalidation")
        yield
        await stop(task)
        with contextlib.suppress(Exception):
            await bus.redis.aclose()

    app.cleanup_ctx.append(bus_ctx)
