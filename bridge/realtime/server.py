"""The Socket.IO server: attached to the bridge's aiohttp app, shared through Redis.

Served at the default path ``/socket.io/`` with both transports (long-polling and
websocket), as seed frontends ask for. With ``redis.url`` set, a python-socketio pub/sub
manager over Redis (manager.py) relays every emit to all facade processes of this deployment.
"""

from __future__ import annotations

import hashlib
import logging

import socketio

from ..config import Config
from ..redis_state import RedisState
from .manager import BridgeRedisManager

log = logging.getLogger("bridge.realtime.server")


def redis_prefix(config: Config) -> str:
    """Keys and channel of this deployment: configured, or derived from its registration."""
    configured = config.get("realtime.redis_prefix")
    if configured:
        return str(configured)
    seed = f"{config['appservice.id']}\x1f{config['appservice.hs_token']}".encode()
    return f"crm-bridge:{hashlib.sha256(seed).hexdigest()[:12]}"


def create_server(config: Config, state: RedisState | None) -> socketio.AsyncServer:
    origins = list(config.get("api.cors_origins") or [])
    manager: socketio.AsyncManager | None = None
    if (url := config.get("redis.url")) and state is not None:
        manager = BridgeRedisManager(url, f"{redis_prefix(config)}:socketio", state, logger=log)
    return socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        # None: same-origin only (and clients outside a browser, which send no Origin).
        cors_allowed_origins=origins or None,
        transports=["polling", "websocket"],
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
    if isinstance(sio.manager, BridgeRedisManager):
        await sio.manager.close()
