"""``/api/chat``: the seed's chat routes."""

from __future__ import annotations

from aiohttp import web

from ..db.conversation import DIRECT, PROJECT
from ..db.crm_user import CrmUser
from ..errors import InvalidParam
from . import CHAT
from .plumbing import authed, json_object, json_response

routes = web.RouteTableDef()


def _conversation_id(body: dict) -> str:
    value = body.get("conversationId")
    if not isinstance(value, str) or not value:
        raise InvalidParam("conversationId is required")
    return value


@routes.get("/api/chat/conversations")
@authed("conversations")
async def conversations(request: web.Request, user: CrmUser) -> web.Response:
    return json_response(await request.app[CHAT].conversations_for(user))


@routes.get("/api/chat/project")
@authed("conversations")
async def project_conversations(request: web.Request, user: CrmUser) -> web.Response:
    return json_response(await request.app[CHAT].conversations_for(user, kind=PROJECT))


@routes.get("/api/chat/direct")
@authed("conversations")
async def direct_conversations(request: web.Request, user: CrmUser) -> web.Response:
    return json_response(await request.app[CHAT].conversations_for(user, kind=DIRECT))


@routes.get("/api/chat/messages/{conversationId}")
@authed("messages")
async def messages(request: web.Request, user: CrmUser) -> web.Response:
    conversation_id = request.match_info["conversationId"]
    return json_response(await request.app[CHAT].history(user, conversation_id, request.query))


@routes.post("/api/chat/send")
@authed("send")
async def send(request: web.Request, user: CrmUser) -> web.Response:
    body = await json_object(request)
    message = await request.app[CHAT].send(
        user,
        _conversation_id(body),
        body.get("content", ""),
        body.get("type", "text"),
        body.get("attachments"),
        body.get("clientMessageId"),
    )
    return json_response(message, status=201)


@routes.post("/api/chat/mark-read")
@authed("mark-read")
async def mark_read(request: web.Request, user: CrmUser) -> web.Response:
    body = await json_object(request)
    read = await request.app[CHAT].mark_read(user, _conversation_id(body), body.get("messageId"))
    return json_response({"message": "Messages marked as read", "messageIds": read})


@routes.post("/api/chat/direct/create")
@authed("direct-create")
async def create_direct(request: web.Request, user: CrmUser) -> web.Response:
    body = await json_object(request)
    other = body.get("userId", body.get("participantId"))
    conversation, created = await request.app[CHAT].create_direct(user, other)
    return json_response(conversation, status=201 if created else 200)
