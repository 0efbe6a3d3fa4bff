"""The CRM's own rooms on the shared socket: ``user_<id>`` and ``company_<id>``.

The CRM frontend joins them on every connect (``join_room``) and listens there for the
CRM's own events (``new_notification``, ``new_lead``, ``task_status_changed``...), which the
CRM backend pushes through ``POST /api/admin/v1/events``. A socket may join only its own
user room and the room of the company its directory entry names; its user room is the
bridge's per-user room already, so events for one user reach all of their sockets.
"""

from __future__ import annotations

from typing import Any

import orjson
import socketio
from aiohttp import web

from ..api.models import AdminEvent, AdminEventResult, RoomName, parse
from ..crm.admin_api import PREFIX, check_token
from ..db.crm_user import CrmUser
from ..errors import Forbidden, InvalidParam, PayloadTooLarge, read_json
from .rooms import user_room

# As large as a chat event may be (a Matrix event's limit).
MAX_EVENT_BYTES = 65536
COMPANY_PREFIX = "company_"
USER_PREFIX = "user_"
# Events of the bridge's own: the CRM may not send them in the bridge's name.
RESERVED = frozenset({
    "new_message", "message_sent", "conversation_update", "user_typing", "messages_read",
    "user_online", "user_offline", "message_pinned", "message_unpinned", "message_deleted",
    "message_update", "chat_cleared", "resync", "error", "joined_conversation", "connect",
    "disconnect", "joined_room", "left_room",
})  # fmt: skip


def company_room(company_id: str) -> str:
    return f"crm:{COMPANY_PREFIX}{company_id}"


def room_name(data: Any) -> str:
    """``join_room`` sends a bare string; ``{room}`` is accepted too."""
    if isinstance(data, dict):
        data = data.get("room")
    return parse(RoomName, {"room": data if isinstance(data, str) else None}).room


def socket_room(user: CrmUser, name: str) -> str:
    """The Socket.IO room behind a CRM room name this user may join; 403 otherwise."""
    if name == f"{USER_PREFIX}{user.crm_user_id}":
        return user_room(user.crm_user_id)
    if user.company_id is not None and name == f"{COMPANY_PREFIX}{user.company_id}":
        return company_room(user.company_id)
    raise Forbidden("You may join only your own user room and your company's room")


def target_room(req: AdminEvent) -> str:
    """Where an admin event goes: one of room, userId or companyId."""
    given = [v for v in (req.room, req.userId, req.companyId) if v is not None]
    if len(given) != 1:
        raise InvalidParam("Name exactly one of room, userId and companyId")
    if req.userId is not None:
        return user_room(str(req.userId))
    if req.companyId is not None:
        return company_room(str(req.companyId))
    assert req.room is not None
    if req.room.startswith(USER_PREFIX) and len(req.room) > len(USER_PREFIX):
        return user_room(req.room.removeprefix(USER_PREFIX))
    if req.room.startswith(COMPANY_PREFIX) and len(req.room) > len(COMPANY_PREFIX):
        return company_room(req.room.removeprefix(COMPANY_PREFIX))
    raise InvalidParam("room must be user_<id> or company_<id>")


def admin_routes(sio: socketio.AsyncServer) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.post(PREFIX + "/events")
    async def post_event(request: web.Request) -> web.Response:
        check_token(request)
        if (request.content_length or 0) > 2 * MAX_EVENT_BYTES:
            raise PayloadTooLarge(f"An event is at most {MAX_EVENT_BYTES} bytes")
        req = parse(AdminEvent, await read_json(request))
        if req.event in RESERVED:
            raise InvalidParam(f"event: {req.event} is the chat's own event")
        if len(orjson.dumps(req.data)) > MAX_EVENT_BYTES:
            raise PayloadTooLarge(f"An event's data is at most {MAX_EVENT_BYTES} bytes of JSON")
        room = target_room(req)
        # Through the manager: every process's sockets in that room, over Redis.
        await sio.emit(req.event, req.data, to=room)
        label = room.removeprefix("crm:").replace(user_room(""), USER_PREFIX, 1)
        result = AdminEventResult(success=True, room=label)
        return web.json_response(result.model_dump())

    return routes
