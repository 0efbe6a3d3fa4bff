"""``/api/chat``: what a user does to existing messages (service functions in actions.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..chat.service import CHAT
from ..db.crm_user import CrmUser
from . import actions, voice
from .contract import MESSAGES, declare
from .models import (
    ConversationPath,
    Deleted,
    EditBody,
    Message,
    MessageRef,
    PinnedMessages,
    PinResult,
    ReactBody,
    UpdateDurationBody,
    UpdateDurationResult,
)
from .plumbing import authed, json_object, json_response

routes = web.RouteTableDef()

Action = Callable[..., Awaitable[dict[str, Any]]]

_UPDATED = {200: (Message, "The message as it is now")}
_ERRORS = (400, 404, 413, 503)


async def _run(request: web.Request, user: CrmUser, action: Action) -> web.Response:
    body = await json_object(request)
    quota: dict[str, str] = {}
    result = await action(request.app[CHAT], user, body, quota=quota)
    response = json_response(result)
    response.headers.update(quota)
    return response


# Counted by the service functions, the same whatever the door.
@routes.post("/api/chat/edit-message")
@declare(
    "Edit a message (m.replace); only its sender may",
    tags=MESSAGES,
    body=EditBody,
    ok=_UPDATED,
    errors=_ERRORS,
    description="403 when the message is someone else's; 400 for an empty text.",
)
@authed(None)
async def edit_message(request: web.Request, user: CrmUser) -> web.Response:
    return await _run(request, user, actions.edit)


@routes.post("/api/chat/delete-message")
@declare(
    "Delete a message (a redaction)",
    tags=MESSAGES,
    body=MessageRef,
    ok={200: (Deleted, "Deleted")},
    errors=_ERRORS,
    description="Your own, or in a project any message where your power level allows "
    "redactions (project admins and managers); in a DM only your own; else 403.",
)
@authed(None)
async def delete_message(request: web.Request, user: CrmUser) -> web.Response:
    return await _run(request, user, actions.delete)


@routes.post("/api/chat/react")
@declare(
    "React to a message (m.annotation); a second time changes nothing",
    tags=MESSAGES,
    body=ReactBody,
    ok=_UPDATED,
    errors=_ERRORS,
    description="One reaction per user and key.",
)
@authed(None)
async def react(request: web.Request, user: CrmUser) -> web.Response:
    return await _run(request, user, actions.react)


@routes.post("/api/chat/unreact")
@declare(
    "Take your reaction back (redacts your annotation)",
    tags=MESSAGES,
    body=ReactBody,
    ok=_UPDATED,
    errors=_ERRORS,
    description="Nothing to take back is no error.",
)
@authed(None)
async def unreact(request: web.Request, user: CrmUser) -> web.Response:
    return await _run(request, user, actions.unreact)


@routes.post("/api/chat/pin-message")
@declare(
    "Pin a message (m.room.pinned_events)",
    tags=MESSAGES,
    body=MessageRef,
    ok={200: (PinResult, "The message, and data with pinnedBy")},
    errors=_ERRORS,
    description="Any member of a project or DM may pin; the room's power levels decide (403 "
    "otherwise). Sockets hear message_pinned.",
)
@authed(None)
async def pin_message(request: web.Request, user: CrmUser) -> web.Response:
    return await _run(request, user, actions.pin)


@routes.post("/api/chat/unpin-message")
@declare(
    "Unpin a message",
    tags=MESSAGES,
    body=MessageRef,
    ok={200: (PinResult, "The message, and data with unpinnedBy")},
    errors=_ERRORS,
    description="Who may unpin follows the room's power levels (403 otherwise). Sockets "
    "hear message_unpinned.",
)
@authed(None)
async def unpin_message(request: web.Request, user: CrmUser) -> web.Response:
    return await _run(request, user, actions.unpin)


@routes.post("/api/chat/update-duration")
@declare(
    "Set a voice note's duration (seconds); only its sender may",
    tags=MESSAGES,
    body=UpdateDurationBody,
    ok={200: (UpdateDurationResult, "The duration every later read shows")},
    errors=_ERRORS,
    description="Stored in Matrix as an m.replace edit of the message (info.duration in ms). "
    "The same value again sends nothing. 403 for someone else's message.",
)
@authed(None)
async def update_duration(request: web.Request, user: CrmUser) -> web.Response:
    return await _run(request, user, voice.update_duration)


@routes.get("/api/chat/pinned-messages/{conversationId}")
@declare(
    "The conversation's pinned messages, newest pin first",
    tags=MESSAGES,
    path=ConversationPath,
    ok={200: (PinnedMessages, "{success, data: full message objects}")},
    errors=(404, 503),
)
@authed("messages")
async def pinned_messages(request: web.Request, user: CrmUser) -> web.Response:
    conversation_id = request.match_info["conversationId"]
    pinned = await actions.pinned(request.app[CHAT], user, conversation_id)
    return json_response({"success": True, "data": pinned})
