"""Message bodies dropped from every process's cache: ``await invalidate(app, event_id)``.

The intake process learns of a redaction (or an edit) from a transaction; facade processes
hold their own in-memory body caches (``EventCache``). ``invalidate`` drops the body here
and publishes the event id on the deployment's Redis channel; every process drops it on
receipt. While a process is not subscribed (Redis down, or not yet up) it may miss
invalidations, so its cache is bypassed (every read goes to the homeserver or the index)
and emptied once it is subscribed again. Without Redis there is one process and the local
drop is all there is.
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

    def _bypass(self, on: bool) -> None:
        cache = self.app[CHAT].events
        if on and not cache.bypass:
            log.warning("Body cache bypassed: not subscribed to invalidations")
        if not on and cache.bypass:
            cache.clear()  # what was missed meanwhile is unknown
            log.info("Body cache in use again (subscribed to invalidations)")
        cache.bypass = on

    async def publish(self, event_id: str) -> None:
        try:
            await self.redis.publish(self.channel, event_id)
        except REDIS_ERRORS as e:
            # The other processes share this Redis: unsubscribed, they bypass their caches.
            log.warning("Cannot publish the invalidation of %s: %s", event_id, e)

    async def run(self) -> None:
        delay = _RETRY[0]
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._bypass(False)
                self.subscribed.set()
                delay = _RETRY[0]
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        data = message["data"]
                        event_id = data.decode() if isinstance(data, bytes) else str(data)
                        self.app[CHAT].events.drop(event_id)
                    elif message is None:
                        await pubsub.ping()  # notice a dead connection while idle
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as e:
                self.subscribed.clear()
                self._bypass(True)
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
