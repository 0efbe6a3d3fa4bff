"""What a socket may do: connect with a JWT, join and leave conversations, send, type, read.

Event names and payloads are the seed's. A failed operation emits ``error {message}`` to
the socket (and answers the ack, when the client asked for one, with the same body).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import socketio
from aiohttp import web

from ..api import CHAT
from ..api.auth import authenticate
from ..context import CONFIG, EVENT_INDEX, MATRIX
from ..db.crm_user import CrmUser
from ..errors import BridgeError, InvalidParam, NotFound, unavailable
from ..ids import event_id_for_message, message_id_for_event
from .presence import PresenceTracker
from .rooms import (
    conversation_id_from,
    conversation_ids_of,
    conversation_room,
    participant_conversation,
    user_room,
)

log = logging.getLogger("bridge.realtime.handlers")

Handler = Callable[[str, Any], Awaitable[Any]]

NOT_FOUND = "Conversation not found"
INTERNAL_ERROR = "Something went wrong; try again shortly"


@dataclass
class Socket:
    user: CrmUser
    # Rooms where this socket set the user typing, cleared on disconnect.
    typing_in: set[str] = field(default_factory=set)


def token_from(environ: dict[str, Any], auth: Any) -> str | None:
    """``auth: {token}`` first, then ``?token=`` in the handshake URL; "Bearer " tolerated."""
    token = auth.get("token") if isinstance(auth, dict) else None
    if not token:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        token = (query.get("token") or query.get("access_token") or [None])[0]
    if isinstance(token, str) and token.lower().startswith("bearer "):
        token = token[7:].strip()
    return token if isinstance(token, str) and token else None


def register(
    app: web.Application, sio: socketio.AsyncServer, sockets: dict[str, Socket], presence_key: Any
) -> None:
    def tracker() -> PresenceTracker:
        return app[presence_key]

    async def fail(sid: str, message: str) -> dict[str, Any]:
        body = {"message": message}
        await sio.emit("error", body, to=sid)
        return body

    def answered(handler: Handler) -> Handler:
        """A failed operation answers ``error {message}`` (and the ack), never silence."""

        @functools.wraps(handler)
        async def wrapper(sid: str, data: Any = None) -> Any:
            try:
                return await handler(sid, data)
            except BridgeError as e:
                return await fail(sid, e.message)
            except Exception as e:
                if (down := unavailable(e)) is not None:
                    return await fail(sid, down.message)
                log.exception("Socket operation %s failed", handler.__name__)
                return await fail(sid, INTERNAL_ERROR)

        return wrapper

    def socket_of(sid: str) -> Socket | None:
        return sockets.get(sid)

    @sio.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        try:
            user = await authenticate(app, token_from(environ, auth))
        except BridgeError as e:
            # The client's connect_error carries message, and data.errcode.
            raise socketio.exceptions.ConnectionRefusedError(
                e.message, {"errcode": e.errcode}
            ) from e
        except Exception as e:
            log.exception("Authenticating a socket failed")
            raise socketio.exceptions.ConnectionRefusedError(
                "Service unavailable; try again shortly", {"errcode": "M_SERVICE_UNAVAILABLE"}
            ) from e
        sockets[sid] = Socket(user)
        try:
            await sio.enter_room(sid, user_room(user.crm_user_id))
            for conversation_id in await conversation_ids_of(app, user):
                await sio.enter_room(sid, conversation_room(conversation_id))
            await tracker().opened(user.crm_user_id, sid)
        except Exception as e:
            sockets.pop(sid, None)
            log.exception("Setting up a socket failed")
            raise socketio.exceptions.ConnectionRefusedError(
                "Service unavailable; try again shortly", {"errcode": "M_SERVICE_UNAVAILABLE"}
            ) from e

    @sio.on("disconnect")
    async def disconnect(sid: str, *args: Any) -> None:
        socket = sockets.pop(sid, None)
        if socket is None:
            return
        matrix = app[MATRIX]
        for room_id in list(socket.typing_in):
            with contextlib.suppress(Exception):
                await matrix.set_typing(room_id, socket.user.mxid, 0)
        await tracker().closed(socket.user.crm_user_id, sid)

    @sio.on("join_conversation")
    async def join_conversation(sid: str, data: Any = None) -> Any:
        socket = socket_of(sid)
        conversation_id = conversation_id_from(data)
        if socket is None or conversation_id is None:
            return await fail(sid, "conversationId is required")
        if await participant_conversation(app, socket.user, conversation_id) is None:
            return await fail(sid, NOT_FOUND)
        await sio.enter_room(sid, conversation_room(conversation_id))
        body = {"conversationId": conversation_id}
        await sio.emit("joined_conversation", body, to=sid)
        return body

    @sio.on("leave_conversation")
    async def leave_conversation(sid: str, data: Any = None) -> Any:
        conversation_id = conversation_id_from(data)
        if conversation_id is None:
            return await fail(sid, "conversationId is required")
        await sio.leave_room(sid, conversation_room(conversation_id))
        return {"conversationId": conversation_id}

    @sio.on("send_message")
    @answered
    async def send_message(sid: str, data: Any = None) -> Any:
        socket = socket_of(sid)
        if socket is None or not isinstance(data, dict):
            return await fail(sid, "send_message needs {conversationId, content, type}")
        message = await app[CHAT].send(
            socket.user,
            str(data.get("conversationId") or ""),
            data.get("content"),
            data.get("type", "text"),
            data.get("attachments"),
            data.get("clientMessageId"),
        )
        await sio.emit("message_sent", message, to=sid)
        return message

    @sio.on("typing")
    @answered
    async def typing(sid: str, data: Any = None) -> Any:
        socket = socket_of(sid)
        conversation_id = conversation_id_from(data)
        if socket is None or conversation_id is None:
            return await fail(sid, "typing needs {conversationId, isTyping}")
        conversation = await participant_conversation(app, socket.user, conversation_id)
        if conversation is None:
            return await fail(sid, NOT_FOUND)
        is_typing = bool(data.get("isTyping", True)) if isinstance(data, dict) else True
        timeout = int(app[CONFIG]["realtime.typing_timeout_ms"]) if is_typing else 0
        await app[MATRIX].set_typing(conversation.room_id, socket.user.mxid, timeout)
        (socket.typing_in.add if is_typing else socket.typing_in.discard)(conversation.room_id)
        return {"conversationId": conversation_id, "isTyping": is_typing}

    @sio.on("mark_as_read")
    @answered
    async def mark_as_read(sid: str, data: Any = None) -> Any:
        socket = socket_of(sid)
        conversation_id = conversation_id_from(data)
        if socket is None or conversation_id is None:
            return await fail(sid, "mark_as_read needs {conversationId, messageIds?}")
        # Checked first, so an outsider learns nothing about the messages they name.
        conversation = await participant_conversation(app, socket.user, conversation_id)
        if conversation is None:
            return await fail(sid, NOT_FOUND)
        message_ids = data.get("messageIds") if isinstance(data, dict) else None
        message_id = await _newest(app, conversation.room_id, message_ids)
        read = await app[CHAT].mark_read(socket.user, conversation_id, message_id)
        return {"conversationId": conversation_id, "messageIds": read}


async def _newest(app: web.Application, room_id: str, message_ids: Any) -> str | None:
    """The newest of the given messages of this room (by arrival order), or None for "the
    latest". Ids from other conversations are ignored."""
    if message_ids is None:
        return None
    if isinstance(message_ids, str):
        message_ids = [message_ids]
    if not isinstance(message_ids, list) or not all(isinstance(m, str) for m in message_ids):
        raise InvalidParam("messageIds must be an array of message ids")
    if not message_ids:
        return None
    event_ids = [e for e in (event_id_for_message(m) for m in message_ids) if e]
    indexed = {
        event_id: event
        for event_id, event in (await app[EVENT_INDEX].get_many(event_ids)).items()
        if event.room_id == room_id
    }
    if not indexed:
        raise NotFound("Message not found")
    newest = max(indexed.values(), key=lambda e: e.seq)
    return message_id_for_event(newest.event_id)


async def close_all(sio: socketio.AsyncServer) -> None:
    """Close every socket of this process (on shutdown), running their disconnect handlers."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(sio.eio.disconnect(), timeout=3)
