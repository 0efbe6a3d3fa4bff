"""What a socket may do: connect with a JWT, join and leave conversations, send, type, read.

Event names and payloads are the seed's. A failed operation emits ``error {message,
errcode}`` to the socket (plus ``retryAfter`` seconds when rate-limited) and answers the
ack, when the client asked for one, with the same body. Sends and read markers go through
the chat service, which applies the same rate limit as REST; typing goes through the
throttle (typing.py). ``typing`` and ``join_conversation`` each count against the user's
limit for their action (api/quota.py, the budget REST requests draw on) before they query
anything. Access that ends while a socket is open is handled in access.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import socketio
from aiohttp import web

from ..api import actions, messaging
from ..api.auth import user_for, verifier
from ..api.quota import count
from ..chat.media_urls import media_signer
from ..chat.service import CHAT
from ..context import EVENT_INDEX
from ..errors import (
    BadRequest,
    BridgeError,
    InvalidParam,
    MissingToken,
    NotFound,
    client_body,
    unavailable,
)
from ..ids import event_id_for_message, message_id_for_event, room_id_for_conversation
from ..matrix.homeserver import for_user
from .access import EXPIRED, Access
from .crm_rooms import room_name, socket_room
from .local import LocalSockets, Socket
from .presence import PresenceTracker
from .rooms import (
    conversation_id_from,
    conversation_ids_of,
    conversation_room,
    participant_conversation,
    user_room,
)
from .service import REALTIME
from .typing import TypingThrottle
from .wire import REFUSED_EVENT, RefusedPayload

log = logging.getLogger("bridge.realtime.handlers")

Handler = Callable[[str, Any], Awaitable[Any]]

NOT_FOUND = "Conversation not found"
INTERNAL_ERROR = "Something went wrong; try again shortly"
UNAVAILABLE = "Service unavailable; try again shortly"


def token_from(environ: dict[str, Any], auth: Any) -> str | None:
    """``auth: {token}`` first, then ``?token=`` in the handshake URL; "Bearer " tolerated."""
    token = auth.get("token") if isinstance(auth, dict) else None
    if not token:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        token = (query.get("token") or query.get("access_token") or [None])[0]
    if isinstance(token, str) and token.lower().startswith("bearer "):
        token = token[7:].strip()
    return token if isinstance(token, str) and token else None


def _refused(message: str, errcode: str) -> socketio.exceptions.ConnectionRefusedError:
    # The client's connect_error carries message, and data.errcode.
    return socketio.exceptions.ConnectionRefusedError(message, {"errcode": errcode})


def register(
    app: web.Application,
    sio: socketio.AsyncServer,
    sockets: LocalSockets,
    access: Access,
    presence_key: Any,
    typing_key: Any,
) -> None:
    tasks: set[asyncio.Task[None]] = set()

    def tracker() -> PresenceTracker:
        return app[presence_key]

    def throttle() -> TypingThrottle:
        return app[typing_key]

    async def fail(sid: str, error: BridgeError) -> dict[str, Any]:
        body = client_body(error)
        await sio.emit("error", body, to=sid)
        return body

    def answered(handler: Handler) -> Handler:
        """A failed operation answers ``error {message, errcode}`` (and the ack), never
        silence. A user waits, so the homeserver's failures come back fast."""

        @functools.wraps(handler)
        async def wrapper(sid: str, data: Any = None) -> Any:
            try:
                with for_user():
                    return await handler(sid, data)
            except BridgeError as e:
                return await fail(sid, e)
            except Exception as e:
                if (down := unavailable(e)) is not None:
                    return await fail(sid, down)
                log.exception("Socket operation %s failed", handler.__name__)
                return await fail(sid, BridgeError(INTERNAL_ERROR))

        return wrapper

    async def entering(conversation_ids: list[str]) -> None:
        """The delivery log's baseline in these conversations, before a socket enters."""
        if REALTIME in app:
            room_ids = [room_id_for_conversation(c) for c in conversation_ids]
            await app[REALTIME].log.entering([room_id for room_id in room_ids if room_id])

    def socket_of(sid: str) -> Socket:
        socket = sockets.get(sid)
        if socket is None:  # closing: its disconnect handler is running
            raise NotFound("This socket is closing")
        return socket

    async def acting(sid: str) -> Socket:
        """The socket, its user read as REST reads one (``user_for``, a second's cache): a
        deactivated account or a changed role or company holds for sockets too."""
        socket = socket_of(sid)
        socket.user = await user_for(app, socket.user.crm_user_id)
        return socket

    def expire_at(sid: str, socket: Socket, expires_at: float) -> None:
        def fire() -> None:
            task = asyncio.create_task(access.close(sid, EXPIRED))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        delay = max(0.0, expires_at - time.time())
        socket.expiry = asyncio.get_running_loop().call_later(delay, fire)

    async def authorise(environ: dict[str, Any], auth: Any) -> tuple[Any, float]:
        try:
            token = token_from(environ, auth)
            if not token:
                raise MissingToken()
            crm_user_id, expires_at = verifier(app).verify_session(token)
            # From the database itself, not the one-second cache: a socket lives long.
            return await user_for(app, crm_user_id, fresh=True), expires_at
        except BridgeError as e:
            raise _refused(e.message, e.errcode) from e
        except Exception as e:
            log.exception("Authenticating a socket failed")
            raise _refused(UNAVAILABLE, "M_SERVICE_UNAVAILABLE") from e

    @sio.on("connect")
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        with for_user():
            await _connect(sid, environ, auth)

    async def _connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        if isinstance(auth, RefusedPayload):
            raise _refused(f"The handshake {auth.reason}", "M_BAD_JSON")
        user, expires_at = await authorise(environ, auth)
        socket = Socket(user)
        # Listed first, so a revocation announced while it is set up reaches it too.
        sockets.add(sid, socket)
        try:
            await sio.enter_room(sid, user_room(user.crm_user_id))
            listed = await conversation_ids_of(app, user)
            await entering(listed)
            for conversation_id in listed:
                await sio.enter_room(sid, conversation_room(conversation_id))
            # Read again: a removal or deactivation applied meanwhile may have been
            # announced before this socket was listed.
            user = await user_for(app, user.crm_user_id, fresh=True)
            for conversation_id in set(listed) - set(await conversation_ids_of(app, user)):
                await sio.leave_room(sid, conversation_room(conversation_id))
            if socket.refused is not None:
                raise BridgeError(socket.refused["message"], errcode=socket.refused["errcode"])
            await tracker().opened(user.crm_user_id, sid)
        except BridgeError as e:
            sockets.pop(sid)
            raise _refused(e.message, e.errcode) from e
        except Exception as e:
            sockets.pop(sid)
            log.exception("Setting up a socket failed")
            raise _refused(UNAVAILABLE, "M_SERVICE_UNAVAILABLE") from e
        expire_at(sid, socket, expires_at)

    @sio.on("disconnect")
    async def disconnect(sid: str, *args: Any) -> None:
        socket = sockets.pop(sid)
        if socket is None:
            return
        for room_id in list(socket.typing_in):
            with contextlib.suppress(Exception):
                await throttle().set(room_id, socket.user.mxid, False)
        await tracker().closed(socket.user.crm_user_id, sid)

    @sio.on(REFUSED_EVENT)
    async def refused_packet(sid: str, data: Any = None) -> Any:
        reason = data.reason if isinstance(data, RefusedPayload) else "is not a valid packet"
        return await fail(sid, BadRequest(f"The message {reason}"))

    @sio.on("join_conversation")
    @answered
    async def join_conversation(sid: str, data: Any = None) -> Any:
        socket = await acting(sid)
        await count(app[CHAT], socket.user, "join-conversation", None)
        conversation_id = conversation_id_from(data)
        if conversation_id is None:
            raise InvalidParam("conversationId is required")
        if await participant_conversation(app, socket.user, conversation_id) is None:
            raise NotFound(NOT_FOUND)
        await entering([conversation_id])
        await sio.enter_room(sid, conversation_room(conversation_id))
        body = {"conversationId": conversation_id}
        await sio.emit("joined_conversation", body, to=sid)
        return body

    @sio.on("leave_conversation")
    @answered
    async def leave_conversation(sid: str, data: Any = None) -> Any:
        conversation_id = conversation_id_from(data)
        if conversation_id is None:
            raise InvalidParam("conversationId is required")
        await sio.leave_room(sid, conversation_room(conversation_id))
        return {"conversationId": conversation_id}

    @sio.on("join_room")
    @answered
    async def join_room(sid: str, data: Any = None) -> Any:
        """The CRM's own rooms: the user's and their company's (crm_rooms.py)."""
        socket = socket_of(sid)
        name = room_name(data)
        # Read afresh: the company may have changed since the socket connected.
        user = socket.user = await user_for(app, socket.user.crm_user_id, fresh=True)
        await sio.enter_room(sid, socket_room(user, name))
        return {"room": name}

    @sio.on("leave_room")
    @answered
    async def leave_room(sid: str, data: Any = None) -> Any:
        socket = await acting(sid)
        name = room_name(data)
        room = socket_room(socket.user, name)
        if room != user_room(socket.user.crm_user_id):  # the bridge's own: the socket stays
            await sio.leave_room(sid, room)
        return {"room": name}

    # The same service functions as REST (api/actions.py), rate limits included.
    @sio.on("pin_message")
    @answered
    async def pin_message(sid: str, data: Any = None) -> Any:
        return await actions.pin(app[CHAT], (await acting(sid)).user, data)

    @sio.on("unpin_message")
    @answered
    async def unpin_message(sid: str, data: Any = None) -> Any:
        return await actions.unpin(app[CHAT], (await acting(sid)).user, data)

    @sio.on("delete_message")
    @answered
    async def delete_message(sid: str, data: Any = None) -> Any:
        return await actions.delete(app[CHAT], (await acting(sid)).user, data)

    @sio.on("send_message")
    @answered
    async def send_message(sid: str, data: Any = None) -> Any:
        socket = await acting(sid)
        if not isinstance(data, dict):
            raise InvalidParam("send_message needs {conversationId, content, type}")
        message = await messaging.send(app[CHAT], socket.user, data)
        await sio.emit("message_sent", message, to=sid)
        return media_signer(app).sign_tree(message, socket.user.crm_user_id)

    @sio.on("typing")
    @answered
    async def typing(sid: str, data: Any = None) -> Any:
        socket = await acting(sid)
        await count(app[CHAT], socket.user, "typing", None)
        conversation_id = conversation_id_from(data)
        if conversation_id is None:
            raise InvalidParam("typing needs {conversationId, isTyping}")
        conversation = await participant_conversation(app, socket.user, conversation_id)
        if conversation is None:
            raise NotFound(NOT_FOUND)
        is_typing = bool(data.get("isTyping", True)) if isinstance(data, dict) else True
        (socket.typing_in.add if is_typing else socket.typing_in.discard)(conversation.room_id)
        await throttle().set(conversation.room_id, socket.user.mxid, is_typing)
        return {"conversationId": conversation_id, "isTyping": is_typing}

    @sio.on("mark_as_read")
    @answered
    async def mark_as_read(sid: str, data: Any = None) -> Any:
        socket = await acting(sid)
        conversation_id = conversation_id_from(data)
        if conversation_id is None:
            raise InvalidParam("mark_as_read needs {conversationId, messageIds?}")
        # Checked first, so an outsider learns nothing about the messages they name.
        conversation = await participant_conversation(app, socket.user, conversation_id)
        if conversation is None:
            raise NotFound(NOT_FOUND)
        message_ids = data.get("messageIds") if isinstance(data, dict) else None
        message_id = await _newest(app, conversation.room_id, message_ids)
        read = await messaging.mark_read(app[CHAT], socket.user, conversation_id, message_id)
        return {"conversationId": conversation_id, "messageIds": read}


async def _newest(app: web.Application, room_id: str, message_ids: Any) -> str | None:
    """The newest of the given messages of this room (in the timeline order), or None for
    "the latest". Ids from other conversations are ignored."""
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
    newest = max(indexed.values(), key=lambda e: e.pos)
    return message_id_for_event(newest.event_id)


async def close_all(sio: socketio.AsyncServer, timeout: float = 3.0) -> None:
    """Close every socket of this process (on shutdown), running their disconnect handlers."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(sio.eio.disconnect(), timeout=timeout)
