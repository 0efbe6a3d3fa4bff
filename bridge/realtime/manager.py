"""python-socketio's pub/sub manager over Redis, with the recovery its stock Redis manager
lacks: it resubscribes within ``MAX_RETRY_S`` of Redis returning, and it never lets a socket
receive a cursor past a message the outage kept from it.

This subclasses ``AsyncPubSubManager`` and implements the two methods it documents for
backends, ``_publish`` and ``_listen``; nothing else of python-socketio is overridden.

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
  stale (a lost pub/sub message, a join racing a removal). ``_handle_emit`` is where the
  pub/sub manager delivers an emit locally, for its own emits and other processes' alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import socketio
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from socketio.async_pubsub_manager import AsyncPubSubManager

from ..redis_state import REDIS_ERRORS, RedisState
from .rooms import is_conversation_room

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


async def close_transport(sio: socketio.AsyncServer, eio_sid: str) -> None:
    """Close one Engine.IO session the way a dying process would: the client sees a
    transport close and reconnects by itself."""
    eio = sio.eio
    socket = eio.sockets.get(eio_sid)
    try:
        await eio.disconnect(eio_sid)
    except Exception:
        log.exception("Could not close a socket after a Redis outage")
    # python-engineio sends a CLOSE packet and leaves a websocket open until its ping
    # timeout; socket.io-client ignores CLOSE over websocket and would sit on a dead session
    # for ~45 s. The queue's end marker stops the writer, which closes the websocket.
    queue = getattr(socket, "queue", None)
    if getattr(socket, "upgraded", False) and isinstance(queue, asyncio.Queue):
        queue.put_nowait(None)


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

    async def _publish(self, data: Any) -> None:
        if not self.state.up:
            return  # the emit was handled locally; no other process hears of it
        try:
            await self._send(self.channel, self.json.dumps(data))
        except REDIS_ERRORS as e:
            self.state.down(f"publishing failed: {e!r}")

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
                        yield self._parsed(message["data"])
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
            data = self.json.loads(raw)
        except ValueError:
            return raw
        if (
            self.on_remote_emit is not None
            and isinstance(data, dict)
            and data.get("method") == "emit"
            and data.get("host_id") != self.host_id
        ):
            args = data.get("data") or [None]
            self.on_remote_emit(str(data.get("event")), args[0])
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
        if eio_sids:
            await asyncio.gather(*(close_transport(self.server, e) for e in eio_sids))
        return len(eio_sids)

    async def close(self) -> None:
        thread = getattr(self, "thread", None)
        if thread is not None:
            thread.cancel()
            await asyncio.wait([thread], timeout=5)
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                await self._publisher.aclose()


class Gate(Protocol):
    async def control(self, payload: dict[str, Any]) -> None:
        """Act on a control message in this process."""

    async def blocked(self, namespace: str, rooms: list[str]) -> set[str]:
        """This process's sockets in these rooms that must not get the event."""


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
        payload = data[0] if isinstance(data, list | tuple) and data else data
        if self.gate is not None and isinstance(payload, dict):
            await self.gate.control(payload)


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
        await super().emit(
            event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs
        )


class GatedRedisManager(_Gated, BridgeRedisManager):
    """Several processes sharing a Redis channel."""

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        if message.get("event") == CONTROL_EVENT:
            return await self._control(message.get("data"))
        skip = await self._skip(
            message.get("namespace"), message.get("room"), message.get("skip_sid")
        )
        await super()._handle_emit({**message, "skip_sid": skip})
