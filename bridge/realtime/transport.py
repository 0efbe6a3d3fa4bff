"""python-socketio's pub/sub manager over Redis: the transport between this deployment's
processes, with the recovery its stock Redis manager lacks.

This subclasses ``AsyncPubSubManager`` and implements the two methods it documents for
backends, ``_publish`` and ``_listen``. Beyond them it uses python-socketio's public API
only: the manager's ``emit`` and ``get_participants``, the server's ``disconnect``.

* Emits are published in order by one writer, pipelined (the outbox): an emit, delivered to
  this process's sockets already, does not wait for Redis.
* Redis down (a publish or the subscription fails): the state turns down (logged once).
  Emits go to this process's sockets only; nothing is published, so nothing half-crosses.
* Redis back (subscribed again): this process publishes a resync notice, then closes its own
  sockets at the transport level, then turns the state up. Every process that gets the
  notice closes its sockets too. Clients reconnect by themselves and catch up from their
  newest cursor (docs/realtime.md, "The delivery log").
* ``_arrived`` (overridden by manager.py's gate) sees another process's message before
  python-socketio handles it. Whatever it raises that is not a Redis error (a database
  failover under the gate) is reported through ``on_listener_error`` and the message is
  dropped, never the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

# Not re-exported by the package; its docstring is the contract for a backend subclass, and
# python-socketio's own Redis and AMQP managers are written against it the same way.
from socketio.async_pubsub_manager import AsyncPubSubManager

from .. import safejson
from ..redis_state import REDIS_ERRORS, RedisState
from ..tasks import stop
from .wire import OpenWebsockets

log = logging.getLogger("bridge.realtime.transport")

MIN_RETRY_S = 0.25
MAX_RETRY_S = 2.0


def redis_client(url: str, retries: int = 1) -> Redis:
    """Fail fast when Redis is away (redis-py's default retries back off for seconds)."""
    return Redis.from_url(
        url, socket_connect_timeout=2, socket_timeout=5, retry=Retry(NoBackoff(), retries)
    )


class BridgeRedisManager(AsyncPubSubManager):
    name = "bridge-redis"

    def __init__(self, url: str, channel: str, state: RedisState, logger: Any = None) -> None:
        super().__init__(channel=channel, logger=logger)
        self.url = url
        self.state = state
        self.resync_channel = f"{channel}:resync"
        self._publisher: Redis | None = None
        # This process's websocket connections, cut after an outage (server.py fills it).
        self.websockets = OpenWebsockets()
        # Published in order by one writer, pipelined: an emit (delivered to this process's
        # sockets already) does not wait for Redis, and a burst costs a round trip per batch.
        self._outbox: deque[str] = deque()
        self._pending = asyncio.Event()
        self._unsent = 0  # queued or being written
        self._writer: asyncio.Task[None] | None = None
        self.failures = 0  # publishes given up on (Redis away)
        # Run after this process's sockets were closed for a recovery (ours or another's).
        self.on_sockets_dropped: list[Callable[[], Awaitable[None]]] = []

    async def _publish(self, data: Any) -> None:
        if not self.state.up:
            self.failures += 1
            return  # the emit was handled locally; no other process hears of it
        self._outbox.append(safejson.dumps(data))
        self._unsent += 1
        self._pending.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_outbox())

    async def _write_outbox(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            while self._outbox:
                batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), 500))]
                try:
                    if self._publisher is None:
                        self._publisher = redis_client(self.url)
                    async with self._publisher.pipeline(transaction=False) as pipe:
                        for payload in batch:
                            pipe.publish(self.channel, payload)
                        await pipe.execute()
                except REDIS_ERRORS as e:
                    # As a failed publish always did: the outage's recovery resyncs every
                    # socket, so what was queued meanwhile is dropped, not sent late.
                    self._unsent -= len(self._outbox)
                    self._outbox.clear()
                    self.failures += 1
                    self.state.down(f"publishing failed: {e!r}")
                finally:
                    self._unsent -= len(batch)

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until what was emitted so far is published (or given up on); True when all
        of it reached Redis (no publish failed meanwhile, none left unsent)."""
        failures = self.failures
        deadline = asyncio.get_running_loop().time() + timeout
        while self._unsent > 0 and self._writer is not None and not self._writer.done():
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.002)
        return self.state.up and self.failures == failures and self._unsent <= 0

    async def _send(self, channel: str, payload: str) -> None:
        if self._publisher is None:
            self._publisher = redis_client(self.url)
        await self._publisher.publish(channel, payload)

    async def _listen(self) -> AsyncIterator[Any]:
        delay = MIN_RETRY_S
        channel, resync = self.channel.encode(), self.resync_channel.encode()
        while True:
            # No retries inside redis-py: it would resubscribe silently and hide the gap.
            client = redis_client(self.url, retries=0)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel, self.resync_channel)
                delay = MIN_RETRY_S
                while True:
                    if not self.state.up:
                        await self._recover()
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    if message["channel"] == resync:
                        await self._on_resync(message["data"])
                    elif message["channel"] == channel:
                        data = self._parsed(message["data"])
                        try:
                            parsed = await self._arrived(data)
                        except Exception as e:
                            # Not Redis (``_arrived`` never calls it): the gate's database,
                            # say a failover. The process says so and resyncs the sockets
                            # concerned; the subscription and the listener live on.
                            await self._listener_failed(data, e)
                            continue
                        if parsed is not None:
                            yield parsed
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as e:
                self.state.down(f"the subscription failed: {e!r}")
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)

    def _parsed(self, raw: bytes) -> Any:
        """Parse once here (``_thread`` accepts a dict) for ``_arrived`` to look inside."""
        try:
            return safejson.loads(raw)
        except ValueError:
            return raw

    async def _arrived(self, data: Any) -> Any:
        """Another process's message, before python-socketio handles it; None drops it."""
        return data

    async def _listener_failed(self, data: Any, error: Exception) -> None:
        """``_arrived`` raised something that is not a Redis error: the message is dropped."""
        log.warning("Dropped another process's message: %r", error)

    async def _recover(self) -> None:
        """Subscribed again after an outage: resync everyone, then resume fan-out."""
        await self._send(self.resync_channel, json.dumps({"host_id": self.host_id}))
        dropped = await self.drop_local_sockets()
        self.state.restored()
        log.info("Closed %d sockets so their clients catch up after the outage", dropped)
        await self._dropped()

    async def _on_resync(self, data: bytes) -> None:
        try:
            host_id = json.loads(data).get("host_id")
        except (ValueError, AttributeError):
            return
        if host_id != self.host_id:
            dropped = await self.drop_local_sockets()
            log.info("Another process recovered from a Redis outage; closed %d sockets", dropped)
            await self._dropped()

    async def _dropped(self) -> None:
        for hook in list(self.on_sockets_dropped):
            try:
                await hook()
            except Exception:
                log.exception("A recovery hook failed")

    async def drop_local_sockets(self) -> int:
        """Close this process's sockets at the transport level: clients reconnect on their
        own (a Socket.IO-level disconnect would make socket.io-client give up)."""
        eio_sids = [eio_sid for _, eio_sid in self.get_participants("/", None)]

        async def close(eio_sid: str) -> None:
            try:
                # Engine.IO's close: the disconnect handlers run, a polling client reconnects.
                await self.server.eio.disconnect(eio_sid)
            except Exception:
                log.exception("Could not close a socket after a Redis outage")

        if eio_sids:
            await asyncio.gather(*(close(e) for e in eio_sids))
        # socket.io-client ignores Engine.IO's CLOSE over a websocket, and python-engineio
        # keeps the websocket open until its ping timeout (~45 s): cut the connections.
        self.websockets.close_all()
        return len(eio_sids)

    async def close(self) -> None:
        await self.flush()
        if self._writer is not None:
            await stop(self._writer)
        thread = getattr(self, "thread", None)
        if thread is not None:
            await stop(thread)
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                await self._publisher.aclose()


def _payload(data: Any) -> Any:
    """An emit's payload as published: python-socketio 5.16+ wraps the arguments in a list
    (binary parts after the first); before, the single argument went as it is."""
    if isinstance(data, list | tuple):
        return data[0] if data else None
    return data
