"""The Socket.IO server: attached to the bridge's aiohttp app, shared through Redis.

Served at the default path ``/socket.io/`` with both transports (long-polling and
websocket), as seed frontends ask for. With ``redis.url`` set, python-socketio's Redis
manager relays every emit to all facade processes of this deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

import socketio
from socketio import packet

from .. import safejson
from ..config import Config

log = logging.getLogger("bridge.realtime.server")

# A packet that could not be taken reaches the handlers as this event, so the socket hears
# `error` (an anonymous socket's packet is dropped by python-socketio, unconnected).
REFUSED_EVENT = "bridge:refused_packet"


class RefusedPayload:
    """Stands in for the data of a packet that could not be taken; says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class CheckedPacket(packet.Packet):
    """Socket.IO packets through ``safejson``; a bad one costs one WARNING line, never a
    traceback: a CONNECT carries a ``RefusedPayload`` as its auth (the connect handler
    refuses it), anything else becomes ``REFUSED_EVENT``."""

    json = safejson

    def decode(self, encoded_packet: Any) -> int:
        try:
            attachments = super().decode(encoded_packet)
        except (ValueError, TypeError) as e:
            reason = e.reason if isinstance(e, safejson.UnsafeJSON) else "is not a valid packet"
        else:
            reason = self._problem()
            if reason is None:
                return attachments
        log.warning("Refused a Socket.IO packet: it %s", reason)
        payload = RefusedPayload(reason)
        if self.packet_type == packet.CONNECT:
            self.data = payload
        else:
            if self.packet_type not in (packet.EVENT, packet.BINARY_EVENT):
                self.id = None  # only an event's id is the client's to be answered
            self.packet_type = packet.EVENT
            self.data = [REFUSED_EVENT, payload]
        return 0

    def _problem(self) -> str | None:
        kind, data = self.packet_type, self.data
        if kind in (packet.EVENT, packet.BINARY_EVENT):
            if not isinstance(data, list) or not data or not isinstance(data[0], str):
                return "is an event without a name"
        elif kind not in (packet.CONNECT, packet.DISCONNECT, packet.ACK, packet.BINARY_ACK):
            return "has an unknown type"
        return None


def redis_prefix(config: Config) -> str:
    """Keys and channel of this deployment: configured, or derived from its registration."""
    configured = config.get("realtime.redis_prefix")
    if configured:
        return str(configured)
    seed = f"{config['appservice.id']}\x1f{config['appservice.hs_token']}".encode()
    return f"crm-bridge:{hashlib.sha256(seed).hexdigest()[:12]}"


def create_server(config: Config) -> socketio.AsyncServer:
    origins = list(config.get("api.cors_origins") or [])
    manager: socketio.AsyncManager | None = None
    if url := config.get("redis.url"):
        manager = socketio.AsyncRedisManager(
            url, channel=f"{redis_prefix(config)}:socketio", logger=log
        )
    return socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        # None: same-origin only (and clients outside a browser, which send no Origin).
        cors_allowed_origins=origins or None,
        transports=["polling", "websocket"],
        serializer=CheckedPacket,
        # Engine.IO parses some packets itself; it falls back to text on a ValueError.
        json=safejson,
        logger=False,
        engineio_logger=False,
    )


def start_manager(sio: socketio.AsyncServer) -> None:
    """Start listening on Redis now, not at the first connection, so emits from other
    processes reach sockets from the start."""
    if not sio.manager_initialized:
        sio.manager_initialized = True
        sio.manager.initialize()


async def stop_manager(sio: socketio.AsyncServer) -> None:
    thread = getattr(sio.manager, "thread", None)
    if thread is not None:
        thread.cancel()
        await asyncio.wait([thread], timeout=5)
    redis = getattr(sio.manager, "redis", None)
    if redis is not None:
        with contextlib.suppress(Exception):
            await redis.aclose()
