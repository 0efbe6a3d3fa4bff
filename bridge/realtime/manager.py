"""python-socketio's pub/sub manager over Redis, with the recovery its stock Redis manager
lacks: it resubscribes within ``MAX_RETRY_S`` of Redis returning, and it never lets a socket
receive a cursor past a message the outage kept from it.

This subclasses ``AsyncPubSubManager`` and implements the two methods it documents for
backends, ``_publish`` and ``_listen``. Beyond them it uses python-socketio's public API
only: the manager's ``emit`` and ``get_participants``, the server's ``disconnect``.

* Redis down (a publish or the subscription fails): the state turns down (logged once).
  Emits go to this process's sockets only; nothing is published, so nothing half-crosses.
* Redis back (subscribed again): this process publishes a resync notice, then closes its own
  sockets at the transport level, then turns the state up. Every process that gets the
  notice closes its sockets too. Clients reconnect by themselves and catch up from the last
  cursor they got, which was pinned while the outage lasted (fanout.py), so nothing they
  missed is skipped.

Both managers (``GatedManager`` in one process, ``GatedRedisManager`` over Redis) add two
things of ours:

* Control messages between this deployment's processes ride the manager's own channel, so
  they are ordered with the emits around them: a revocation published before a message is
  handled before that message in every process.
* A gate checked at delivery, in each process, for its own sockets: a conversation's events
  reach only sockets whose user takes part in it, even if a socket's room membership went
  stale (a lost pub/sub message, a join racing a removal). The gate adds the sockets it
  holds back to the emit's ``skip_sid``: in ``emit`` for this process's own emits, and in
  ``_listen`` for other processes' emits before python-socketio delivers them here.
* Events that carry media URLs (the gate says which) are delivered socket by socket, each
  with a copy signed for its own user (bridge/chat/media_urls.py): through the base class's
  ``AsyncManager.emit`` to one sid, which delivers here only. Other processes get the
  shared payload and do the same for their own sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import socketio
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

# Not re-exported by the package; its docstring is the contract for a backend subclass, and
# python-socketio's own Redis and AMQP managers are written against it the same way.
from socketio.async_pubsub_manager import AsyncPubSubManager

from .. import safejson
from ..redis_state import REDIS_ERRORS, RedisState
from ..tasks import stop
from .rooms import is_conversation_room
from .wire import OpenWebsockets

log = logging.getLogger("bridge.realtime.manager")

CONTROL_EVENT = "bridge:control"
# No socket ever joins it: if a control message were delivered as an event, nobody gets it.
CONTROL_ROOM = "bridge:control"

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
        # Told of every event another process emitted, before it reaches our sockets: the
        # claims remember them, in case Redis is gone when a second path sees the message.
        self.on_remote_emit: Callable[[str, Any], None] | None = None
        # This process's websocket connections, cut after an outage (server.py fills it).
        self.websockets = OpenWebsockets()
        # Published in order by one writer, pipelined: an emit (delivered to this process's
        # sockets already) does not wait for Redis, and a burst costs a round trip per batch.
        self._outbox: deque[str] = deque()
        self._pending = asyncio.Event()
        self._unsent = 0  # queued or being written
        self._writer: asyncio.Task[None] | None = None

    async def _publish(self, data: Any) -> None:
        if not self.state.up:
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
                    self.state.down(f"publishing failed: {e!r}")
                finally:
                    self._unsent -= len(batch)

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until what was emitted so far is published (or given up on)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._unsent > 0 and self._writer is not None and not self._writer.done():
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.002)

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
                        parsed = await self._arrived(self._parsed(message["data"]))
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
        """Parse once here (``_thread`` accepts a dict) to show remote emits to the hook."""
        try:
            data = safejson.loads(raw)
        except ValueError:
            return raw
        if (
            self.on_remote_emit is not None
            and isinstance(data, dict)
            and data.get("method") == "emit"
            and data.get("host_id") != self.host_id
        ):
            self.on_remote_emit(str(data.get("event")), _payload(data.get("data")))
        return data

    async def _arrived(self, data: Any) -> Any:
        """Another process's message, before python-socketio handles it; None drops it."""
        return data

    async def _recover(self) -> None:
        """Subscribed again after an outage: resync everyone, then resume fan-out."""
        await self._send(self.resync_channel, json.dumps({"host_id": self.host_id}))
        dropped = await self.drop_local_sockets()
        self.state.restored()
        log.info("Closed %d sockets so their clients catch up after the outage", dropped)

    async def _on_resync(self, data: bytes) -> None:
        try:
            host_id = json.loads(data).get("host_id")
        except (ValueError, AttributeError):
            return
        if host_id != self.host_id:
            dropped = await self.drop_local_sockets()
            log.info("Another process recovered from a Redis outage; closed %d sockets", dropped)

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


class Gate(Protocol):
    async def control(self, payload: dict[str, Any]) -> None:
        """Act on a control message in this process."""

    async def blocked(self, namespace: str, rooms: list[str]) -> set[str]:
        """This process's sockets in these rooms that must not get the event."""

    def personal(self, event: str, data: Any) -> bool:
        """Whether each socket gets a copy of its own (media URLs signed for its user)."""

    def copies_for(self, data: Any, sids: list[str]) -> list[tuple[Any, list[str]]]:
        """The copy of ``data`` for each group of this process's sockets."""


def _payload(data: Any) -> Any:
    """An emit's payload as published: python-socketio 5.16+ wraps the arguments in a list
    (binary parts after the first); before, the single argument went as it is."""
    if isinstance(data, list | tuple):
        return data[0] if data else None
    return data


def _rooms(room: Any) -> list[str]:
    if isinstance(room, str):
        return [room]
    return [r for r in room or [] if isinstance(r, str)]


class _Gated:
    gate: Gate | None = None

    async def _skip(self, namespace: str | None, room: Any, skip_sid: Any) -> Any:
        rooms = _rooms(room)
        if self.gate is None or not any(is_conversation_room(r) for r in rooms):
            return skip_sid
        blocked = await self.gate.blocked(namespace or "/", rooms)
        if not blocked:
            return skip_sid
        skip = skip_sid if isinstance(skip_sid, list) else [] if skip_sid is None else [skip_sid]
        return [*skip, *sorted(blocked)]

    async def _control(self, data: Any) -> None:
        payload = _payload(data)
        if self.gate is not None and isinstance(payload, dict):
            await self.gate.control(payload)

    def _personal(self, event: str, data: Any, room: Any, callback: Any) -> bool:
        return (
            self.gate is not None
            and callback is None
            and bool(_rooms(room))
            and self.gate.personal(event, data)
        )

    async def _deliver_each(
        self, event: str, data: Any, namespace: str | None, room: Any, skip_sid: Any
    ) -> None:
        """This process's sockets in ``room``, each with its own user's copy (one encoding
        per user, not one per emit: only events that carry media URLs come here)."""
        assert self.gate is not None
        namespace = namespace or "/"
        skip = set(skip_sid if isinstance(skip_sid, list) else [skip_sid] if skip_sid else [])
        sids: dict[str, None] = {}
        for name in _rooms(room):
            for sid, _ in self.get_participants(namespace, name):  # type: ignore[attr-defined]
                if sid not in skip:
                    sids[sid] = None
        for copy, group in self.gate.copies_for(data, list(sids)):
            for sid in group:
                # The base class's emit: this process's socket only, never published.
                await socketio.AsyncManager.emit(self, event, copy, namespace, room=sid)  # type: ignore[arg-type]


class GatedManager(_Gated, socketio.AsyncManager):
    """One process, no Redis."""

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        room = to or room
        if event == CONTROL_EVENT:
            return await self._control(data)
        skip_sid = await self._skip(namespace, room, skip_sid)
        if self._personal(event, data, room, callback):
            return await self._deliver_each(event, data, namespace, room, skip_sid)
        await super().emit(
            event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs
        )


class GatedRedisManager(_Gated, BridgeRedisManager):
    """Several processes sharing a Redis channel: our own emits are gated before
    python-socketio delivers them here and publishes them; other processes' as they arrive
    (each process skips only its own sockets, whose ids are unique)."""

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        room = to or room
        if event == CONTROL_EVENT:
            await self._control(data)  # here, then to the other processes (CONTROL_ROOM)
        else:
            skip_sid = await self._skip(namespace, room, skip_sid)
            if self._personal(event, data, room, callback):
                # Our sockets get their own copies; the others' processes make theirs
                # from the shared one (``_arrived``).
                await self._deliver_each(event, data, namespace, room, skip_sid)
                if not kwargs.get("ignore_queue"):
                    await self._publish(
                        {"method": "emit", "event": event, "data": [data], "binary": False,
                         "namespace": namespace or "/", "room": room, "skip_sid": skip_sid,
                         "callback": None, "host_id": self.host_id}
                    )  # fmt: skip
                return
        await super().emit(
            event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs
        )

    async def _arrived(self, data: Any) -> Any:
        if (
            not isinstance(data, dict)
            or data.get("method") != "emit"
            or data.get("host_id") == self.host_id
        ):
            return data
        if data.get("event") == CONTROL_EVENT:
            await self._control(data.get("data"))
            return None
        skip = await self._skip(data.get("namespace"), data.get("room"), data.get("skip_sid"))
        event, payload = str(data.get("event")), _payload(data.get("data"))
        if not data.get("binary") and self._personal(
            event, payload, data.get("room"), data.get("callback")
        ):
            await self._deliver_each(event, payload, data.get("namespace"), data.get("room"), skip)
            return None
        return {**data, "skip_sid": skip}
