"""The Socket.IO server: attached to the bridge's aiohttp app, shared through Redis.

Served at the default path ``/socket.io/`` with both transports (long-polling and
websocket), as seed frontends ask for. With ``redis.url`` set, a python-socketio pub/sub
manager over Redis (manager.py) relays every emit to all facade processes of this deployment.
Either manager is gated (manager.py): control messages between processes, and a
participation check at delivery.
"""

from __future__ import annotations

import logging

import socketio

from .. import safejson
from ..config import Config, redis_prefix
from ..redis_state import RedisState
from .manager import BridgeRedisManager, GatedManager, GatedRedisManager
from .wire import CheckedPacket, CheckedWebSocket, EngineLog

log = logging.getLogger("bridge.realtime.server")

__all__ = ["create_server", "redis_prefix", "start_manager", "stop_manager"]


def create_server(config: Config, state: RedisState | None) -> socketio.AsyncServer:
    origins = list(config.get("api.cors_origins") or [])
    manager: socketio.AsyncManager = GatedManager()
    if (url := config.get("redis.url")) and state is not None:
        manager = GatedRedisManager(url, f"{redis_prefix(config)}:socketio", state, logger=log)
    server = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        # None: same-origin only (and clients outside a browser, which send no Origin).
        cors_allowed_origins=origins or None,
        transports=["polling", "websocket"],
        serializer=CheckedPacket,
        # Engine.IO parses some packets itself; it falls back to text on a ValueError.
        json=safejson,
        logger=False,
        engineio_logger=EngineLog(logging.getLogger("bridge.realtime.engineio")),
    )
    # This server's copy of the driver table: the websocket class is the one hook there is.
    server.eio._async = {**server.eio._async, "websocket": CheckedWebSocket}
    return server


def start_manager(sio: socketio.AsyncServer) -> None:
    """Start listening on Redis now, not at the first connection, so emits from other
    processes reach sockets from the start."""
    if not sio.manager_initialized:
        sio.manager_initialized = True
        sio.manager.initialize()


async def stop_manager(sio: socketio.AsyncServer) -> None:
    if isinstance(sio.manager, BridgeRedisManager):
        await sio.manager.close()
