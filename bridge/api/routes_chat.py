"""``/api/chat``: the seed's chat routes."""

from __future__ import annotations

from aiohttp import web

from ..chat.service import CHAT
from ..db.conversation import DIRECT, PROJECT
from ..db.crm_user import CrmUser
from .clear import clear_chat as clear_for
from .direct import open_direct
from .employees import employees as employees_of
from .history import page_of
from .messaging import mark_read as mark_read_for
from .messaging import send as send_for
from .models import DirectCreateBody, UnreadCount, parse
from .people import online_users as online_users_of
from .plumbing import authed, json_object, json_response
from .project_chats import ensure_project_chats, project_groups, request_pull
from .search import search as search_for

routes = web.RouteTableDef()


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
    return json_response(await page_of(request.app[CHAT], user, conversation_id, request.query))


# Sends and read markers are counted by the service functions, the same for REST and sockets.
@routes.post("/api/chat/send")
@authed(None)
async def send(request: web.Request, user: CrmUser) -> web.Response:
    body = await json_object(request)
    quota: dict[str, str] = {}
    message = await send_for(
        request.app[CHAT],
        user,
        body.get("conversationId"),
        body.get("content", ""),
        body.get("type", "text"),
        body.get("attachments"),
        body.get("clientMessageId"),
        reply_to=body.get("replyTo"),
        mentions=body.get("mentions"),
        thread_id=body.get("threadId"),
        quota=quota,
    )
    response = json_response(message, status=201)
    response.headers.update(quota)
    return response


@routes.post("/api/chat/mark-read")
@authed(None)
async def mark_read(request: web.Request, user: CrmUser) -> web.Response:
    body = await json_object(request)
    quota: dict[str, str] = {}
    read = await mark_read_for(
        request.app[CHAT], user, body.get("conversationId"), body.get("messageId"), quota=quota
    )
    response = json_response({"message": "Messages marked as read", "messageIds": read})
    response.headers.update(quota)
    return response


@routes.post("/api/chat/direct/create")
@authed("direct-create")
async def create_direct(request: web.Request, user: CrmUser) -> web.Response:
    req = parse(DirectCreateBody, await json_object(request))
    other = req.userId if req.userId is not None else req.participantId
    conversation, created = await open_direct(request.app[CHAT], user, other)
    # The seed reads the conversation at the top level, the CRM messenger in ``data``.
    body = {**conversation, "success": True, "data": conversation}
    return json_response(body, status=201 if created else 200)


@routes.get("/api/chat/conversations/conversation/{conversationId}")
@authed("conversations")
async def conversation(request: web.Request, user: CrmUser) -> web.Response:
    conversation_id = request.match_info["conversationId"]
    return json_response(await request.app[CHAT].conversation(user, conversation_id))


@routes.get("/api/chat/unread-count")
@authed("unread-count")
async def unread_count(request: web.Request, user: CrmUser) -> web.Response:
    count = await request.app[CHAT].unread_count(user)
    return json_response(UnreadCount(count=count).model_dump())


@routes.get("/api/chat/online-users")
@authed("online-users")
async def online_users(request: web.Request, user: CrmUser) -> web.Response:
    return json_response(await online_users_of(request.app[CHAT], user))


@routes.get("/api/chat/search")
@authed("search")
async def search(request: web.Request, user: CrmUser) -> web.Response:
    return json_response(await search_for(request.app[CHAT], user, request.query))


@routes.post("/api/chat/clear-chat")
@authed(None)
async def clear_chat(request: web.Request, user: CrmUser) -> web.Response:
    body = await json_object(request)
    quota: dict[str, str] = {}
    result = await clear_for(request.app[CHAT], user, body.get("conversationId"), quota=quota)
    response = json_response(result)
    response.headers.update(quota)
    return response


@routes.get("/api/chat/employees")
@authed("employees")
async def employees(request: web.Request, user: CrmUser) -> web.Response:
    return json_response(await employees_of(request.app[CHAT], user, request.query))


@routes.post("/api/chat/ensure-project-chats")
@authed("ensure-project-chats")
async def ensure_chats(request: web.Request, user: CrmUser) -> web.Response:
    return json_response(await ensure_project_chats(request.app[CHAT], user))


@routes.get("/api/chat/project-groups")
@authed("conversations")
async def groups(request: web.Request, user: CrmUser) -> web.Response:
    return json_response(await project_groups(request.app[CHAT], user))


@routes.post("/api/chat/conversations/sync-projects")
@authed("directory-pull")
async def sync_projects(request: web.Request, user: CrmUser) -> web.Response:
    return json_response(await request_pull(request.app[CHAT], user), status=202)


@routes.post("/api/chat/conversations/sync-project/{projectId}")
@authed("directory-pull")
async def sync_project(request: web.Request, user: CrmUser) -> web.Response:
    project_id = request.match_info["projectId"]
    return json_response(await request_pull(request.app[CHAT], user, project_id), status=202)


@routes.post("/api/chat/conversations/add-member")
@authed("directory-pull")
async def add_member(request: web.Request, user: CrmUser) -> web.Response:
    body = await json_object(request)
    return json_response(await request_pull(request.app[CHAT], user, body=body), status=202)
