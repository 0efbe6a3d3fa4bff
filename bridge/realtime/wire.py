"""What a socket sends, checked before any handler: anyone can open an Engine.IO session.

A bad packet costs one WARNING line, never a traceback, and is answered where there is
someone to answer: a CONNECT carrying junk is refused (``connect_error``), a connected
socket's bad packet becomes ``REFUSED_EVENT`` and the socket hears ``error``; an unconnected
socket's is dropped by python-socketio.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from aiohttp import web
from engineio.async_drivers import aiohttp as engineio_aiohttp
from socketio import packet

from .. import safejson

log = logging.getLogger("bridge.realtime.wire")

REFUSED_EVENT = "bridge:refused_packet"
# Engine.IO packet types a client sends as text (open .. noop).
_ENGINEIO_TYPES = "0123456"


class RefusedPayload:
    """Stands in for the data of a packet that could not be taken; says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class CheckedPacket(packet.Packet):
    """Socket.IO packets decoded through ``safejson``, refused rather than raised."""

    json = safejson

    def __init__(self, *args: Any, encoded_packet: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, encoded_packet=encoded_packet, **kwargs)
        if encoded_packet is not None and not encoded_packet:
            self._refuse("is empty")  # python-socketio would take it as an event of None

    def decode(self, encoded_packet: Any) -> int:
        try:
            attachments = super().decode(encoded_packet)
        except (ValueError, TypeError) as e:
            reason = e.reason if isinstance(e, safejson.UnsafeJSON) else "is not a valid packet"
        else:
            reason = self._problem()
            if reason is None:
                return attachments
        self._refuse(reason)
        return 0

    def _problem(self) -> str | None:
        kind, data = self.packet_type, self.data
        if kind in (packet.BINARY_EVENT, packet.BINARY_ACK):
            return "carries binary data, which no event takes"
        if kind == packet.EVENT:
            if not isinstance(data, list) or not data or not isinstance(data[0], str):
                return "is an event without a name"
        elif kind not in (packet.CONNECT, packet.DISCONNECT, packet.ACK):
            return "has an unknown type"
        return None

    def _refuse(self, reason: str) -> None:
        log.warning("Refused a Socket.IO packet: it %s", reason)
        payload = RefusedPayload(reason)
        if self.packet_type == packet.CONNECT:
            self.data = payload
            return
        if self.packet_type not in (packet.EVENT, packet.BINARY_EVENT):
            self.id = None  # only an event's id is the client's to be answered
        self.packet_type = packet.EVENT
        self.data = [REFUSED_EVENT, payload]


class CheckedWebSocket(engineio_aiohttp.WebSocket):  # type: ignore[misc]
    """python-engineio's aiohttp websocket, dropping text frames that are not packets
    (its loop dies with a traceback on one)."""

    async def wait(self) -> Any:
        while True:
            data = await super().wait()
            if isinstance(data, bytes) or (data and data[0] in _ENGINEIO_TYPES):
                return data
            log.warning("Refused an Engine.IO frame: it is not a packet")


class EngineLog(logging.LoggerAdapter):
    """python-engineio's logger. A client's undecodable packet reaches it as
    ``logger.exception`` and a wrong protocol version as ``logger.error``: one WARNING line
    each here (the traceback at DEBUG). Its INFO lines quote every packet, the handshake's
    token included: dropped."""

    _CLIENT_FAULTS = (ValueError, TypeError, LookupError)

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        return

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.warning(msg, *args, **kwargs)

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, self._CLIENT_FAULTS):
            super().exception(msg, *args, exc_info=exc_info, **kwargs)
            return
        self.debug(msg, *args, exc_info=exc_info, **kwargs)
        self.warning("%s: %s", str(msg) % args if args else msg, type(error).__name__)


class OpenWebsockets:
    """The connections of this process's websockets, so they can be cut at once.

    Engine.IO's close leaves a websocket open until its ping timeout, and socket.io-client
    ignores the CLOSE packet over a websocket; cutting the connection (aiohttp's
    ``request.transport``) makes the client see a transport close and reconnect by itself.
    """

    def __init__(self) -> None:
        # Websocket transports open now: each is removed when its request ends.
        self._open: set[asyncio.BaseTransport] = set()

    def handler(self, sio: socketio.AsyncServer) -> Callable[[web.Request], Awaitable[Any]]:
        """The ``/socket.io/`` route: python-socketio's documented ``handle_request``, with
        each websocket's connection recorded while it lasts."""

        async def handle(request: web.Request) -> Any:
            upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
            transport = request.transport if upgrade else None
            if transport is not None:
                self._open.add(transport)
            try:
                return await sio.handle_request(request)
            finally:
                if transport is not None:
                    self._open.discard(transport)

        return handle

    def close_all(self) -> int:
        cut = list(self._open)
        self._open.clear()
        for transport in cut:
            transport.close()
        return len(cut)

    def __len__(self) -> int:
        return len(self._open)
