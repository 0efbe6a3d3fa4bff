"""``/api/chat``: what a user does to existing messages (service functions in actions.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..chat.service import CHAT
from ..db.crm_user import CrmUser
from . import actions, voice
from .models import PinnedMessages
from .plumbing import authed, json_object, json_response

routes = web.RouteTableDef()

Action = Callable[..., Awaitable[dict[str, Any]]]


async def _run(request: web.Request, user: CrmUser, action: Action) -> web.Response:
    body = await json_object(request)
    quota: dict[str, str] = {}
    result = await action(request.app[CHAT], user, body, quota=quota)
    response = json_response(result)
    response.headers.update(quota)
    return response


# Counted by the service functions, the same whatever the door.
@routes.post("/api/chat/edit-message")
@authed(None)
async def edit_message(request: web.Request, user: CrmUser) -> web.Response:
    return await _run(request, user, actions.edit)


@routes.post("/api/chat/delete-message")
@authed(None)
async def delete_message(request: web.Request, user: CrmUser) -> web.Response:
    return await _run(request, user, actions.delete)


@routes.post("/api/chat/react")
@authed(None)
async def react(request: web.Request, user: CrmUser) -> web.Response:
    return await _run(request, user, actions.react)


@routes.post("/api/chat/unreact")
@authed(None)
async def unreact(request: web.Request, user: CrmUser) -> web.Response:
    return await _run(request, user, actions.unreact)


@routes.post("/api/chat/pin-message")
@authed(None)
async def pin_message(request: web.Request, user: CrmUser) -> web.Response:
    return await _run(request, user, actions.pin)


@routes.post("/api/chat/unpin-message")
@authed(None)
async def unpin_message(request: web.Request, user: CrmUser) -> web.Response:
    return await _run(request, user, actions.unpin)


@routes.post("/api/chat/update-duration")
@authed(None)
async def update_duration(request: web.Request, user: CrmUser) -> web.Response:
    return await _run(request, user, voice.update_duration)


@routes.get("/api/chat/pinned-messages/{conversationId}")
@authed("messages")
async def pinned_messages(request: web.Request, user: CrmUser) -> web.Response:
    conversation_id = request.match_info["conversationId"]
    pinned = await actions.pinned(request.app[CHAT], user, conversation_id)
    return json_response(PinnedMessages(success=True, data=pinned).model_dump())
