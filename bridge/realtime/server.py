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
from aiohttp import web

from .. import safejson
from ..config import Config, redis_prefix
from ..redis_state import RedisState
from .manager import GatedManager, GatedRedisManager
from .transport import BridgeRedisManager
from .wire import CheckedPacket, CheckedWebSocket, EngineLog, OpenWebsockets

log = logging.getLogger("bridge.realtime.server")

__all__ = ["attach", "create_server", "redis_prefix", "start_manager", "stop_manager"]

PATH = "/socket.io/"


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
    # The one place we reach past python-engineio's public API: there is no hook for a
    # websocket frame that is no Engine.IO packet (its read loop dies on one, with a
    # traceback). This server's copy of the driver table gets a websocket class that drops
    # them; if a release lays the table out otherwise, we run without it and say so.
    drivers = getattr(server.eio, "_async", None)
    if isinstance(drivers, dict) and "websocket" in drivers:
        server.eio._async = {**drivers, "websocket": CheckedWebSocket}
    else:
        log.warning("python-engineio has no websocket driver table; junk frames are not filtered")
    return server


def attach(app: web.Application, sio: socketio.AsyncServer) -> OpenWebsockets:
    """Serve Socket.IO at ``/socket.io/`` through ``AsyncServer.handle_request`` (what
    ``attach`` registers), recording open websockets for the Redis manager (after an
    outage) and the shutdown to cut."""
    manager = sio.manager
    websockets = manager.websockets if isinstance(manager, BridgeRedisManager) else OpenWebsockets()
    handle = websockets.handler(sio)
    app.router.add_get(PATH, handle)
    app.router.add_post(PATH, handle)
    app.router.add_route("OPTIONS", PATH, handle)
    return websockets


def start_manager(sio: socketio.AsyncServer) -> None:
    """Start listening on Redis now, not at the first connection, so emits from other
    processes reach sockets from the start."""
    if not sio.manager_initialized:
        sio.manager_initialized = True
        sio.manager.initialize()


async def stop_manager(sio: socketio.AsyncServer) -> None:
    if isinstance(sio.manager, BridgeRedisManager):
        await sio.manager.close()
