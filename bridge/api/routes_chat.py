"""``/api/chat``: the seed's chat routes."""

from __future__ import annotations

from aiohttp import web

from ..chat.service import CHAT
from ..db.conversation import DIRECT, PROJECT
from ..db.crm_user import CrmUser
from .clear import clear_chat as clear_for
from .contract import CONVERSATIONS, MESSAGES, PEOPLE, declare
from .direct import open_direct
from .employees import employees as employees_of
from .history import page_of
from .messaging import mark_read as mark_read_for
from .messaging import send as send_for
from .models import (
    AddMemberBody,
    ClearChatResult,
    Conversation,
    ConversationPath,
    ConversationRef,
    DirectBody,
    DirectCreated,
    DirectoryPullResult,
    Employee,
    EmployeesQuery,
    EnsureProjectChatsResult,
    HistoryQuery,
    MarkReadBody,
    MarkReadResult,
    Message,
    MessagePage,
    OnlineUser,
    ProjectGroups,
    ProjectPath,
    SearchPage,
    SearchQuery,
    SendBody,
    UnreadCount,
    parse,
)
from .people import online_users as online_users_of
from .plumbing import authed, json_object, json_response
from .project_chats import ensure_project_chats, project_groups, request_pull
from .search import search as search_for

routes = web.RouteTableDef()


@routes.get("/api/chat/conversations")
@declare(
    "All conversations of the user, most recent activity first",
    tags=CONVERSATIONS,
    ok={200: (list[Conversation], "A bare array of conversations")},
    errors=(503,),
)
@authed("conversations")
async def conversations(request: web.Request, user: CrmUser) -> web.Response:
    return json_response(await request.app[CHAT].conversations_for(user))


@routes.get("/api/chat/project")
@declare(
    "The user's project conversations",
    tags=CONVERSATIONS,
    ok={200: (list[Conversation], "A bare array of project conversations")},
    errors=(503,),
)
@authed("conversations")
async def project_conversations(request: web.Request, user: CrmUser) -> web.Response:
    return json_response(await request.app[CHAT].conversations_for(user, kind=PROJECT))


@routes.get("/api/chat/direct")
@declare(
    "The user's direct conversations",
    tags=CONVERSATIONS,
    ok={200: (list[Conversation], "A bare array of direct conversations")},
    errors=(503,),
)
@authed("conversations")
async def direct_conversations(request: web.Request, user: CrmUser) -> web.Response:
    return json_response(await request.app[CHAT].conversations_for(user, kind=DIRECT))


@routes.get("/api/chat/messages/{conversationId}")
@declare(
    "A page of messages, served from the homeserver",
    tags=MESSAGES,
    path=ConversationPath,
    query=HistoryQuery,
    ok={200: (MessagePage, "Messages oldest to newest within the page")},
    errors=(400, 404, 503),
    description=(
        "page=1 holds the newest `limit` messages; page 2 the ones before. "
        "Alternatively `before` a message id, or `after` a cursor (a `new_message`'s "
        "or a page's `nextCursor`, an opaque token of the conversation's log; a "
        "message id is still accepted there for one release, deprecated); "
        "`nextCursor` continues."
    ),
)
@authed("messages")
async def messages(request: web.Request, user: CrmUser) -> web.Response:
    conversation_id = request.match_info["conversationId"]
    return json_response(await page_of(request.app[CHAT], user, conversation_id, request.query))


# Sends and read markers are counted by the service functions, the same for REST and sockets.
@routes.post("/api/chat/send")
@declare(
    "Send a message as the user",
    tags=MESSAGES,
    body=SendBody,
    ok={201: (Message, "The message, with conversationId and cursor")},
    errors=(400, 404, 409, 413, 503),
    description="clientMessageId makes a retry idempotent: one message, same response.",
)
@authed(None)
async def send(request: web.Request, user: CrmUser) -> web.Response:
    body = await json_object(request)
    quota: dict[str, str] = {}
    message = await send_for(request.app[CHAT], user, body, quota=quota)
    response = json_response(message, status=201)
    response.headers.update(quota)
    return response


@routes.post("/api/chat/mark-read")
@declare(
    "Mark messages read up to messageId (or the latest)",
    tags=MESSAGES,
    body=MarkReadBody,
    ok={200: (MarkReadResult, "Messages marked as read")},
    errors=(400, 404, 413, 503),
)
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
@declare(
    "The direct conversation with another user, created if missing",
    tags=CONVERSATIONS,
    body=DirectBody,
    ok={
        200: (DirectCreated, "The existing conversation"),
        201: (DirectCreated, "A new conversation"),
    },
    errors=(400, 404, 413, 503),
)
@authed("direct-create")
async def create_direct(request: web.Request, user: CrmUser) -> web.Response:
    other = parse(DirectBody, await json_object(request)).other
    conversation, created = await open_direct(request.app[CHAT], user, other)
    # The seed reads the conversation at the top level, the CRM messenger in ``data``.
    body = {**conversation, "success": True, "data": conversation}
    return json_response(body, status=201 if created else 200)


@routes.get("/api/chat/conversations/conversation/{conversationId}")
@declare(
    "One conversation, in the same shape as in the list",
    tags=CONVERSATIONS,
    path=ConversationPath,
    ok={200: (Conversation, "The conversation")},
    errors=(404, 503),
)
@authed("conversations")
async def conversation(request: web.Request, user: CrmUser) -> web.Response:
    conversation_id = request.match_info["conversationId"]
    return json_response(await request.app[CHAT].conversation(user, conversation_id))


@routes.get("/api/chat/unread-count")
@declare(
    "Unread messages over all the user's conversations (from the index)",
    tags=CONVERSATIONS,
    ok={200: (UnreadCount, "The sum of the list's unreadCount")},
    errors=(503,),
)
@authed("unread-count")
async def unread_count(request: web.Request, user: CrmUser) -> web.Response:
    count = await request.app[CHAT].unread_count(user)
    return json_response(UnreadCount(count=count).model_dump())


@routes.get("/api/chat/online-users")
@declare(
    "Participants of the user's conversations who are online now",
    tags=PEOPLE,
    ok={200: (list[OnlineUser], "Online people")},
    errors=(503,),
)
@authed("online-users")
async def online_users(request: web.Request, user: CrmUser) -> web.Response:
    return json_response(await online_users_of(request.app[CHAT], user))


@routes.get("/api/chat/search")
@declare(
    "Messages matching q in the user's conversations (the homeserver's /search)",
    tags=MESSAGES,
    query=SearchQuery,
    ok={200: (SearchPage, "Matches, newest first")},
    errors=(400, 404, 503),
)
@authed("search")
async def search(request: web.Request, user: CrmUser) -> web.Response:
    return json_response(await search_for(request.app[CHAT], user, request.query))


@routes.post("/api/chat/clear-chat")
@declare(
    "Hide the conversation's history up to now, for the calling user only",
    tags=CONVERSATIONS,
    body=ConversationRef,
    ok={200: (ClearChatResult, "The point up to which history is hidden")},
    errors=(400, 404, 413, 503),
    description=(
        "Stored as the user's Matrix room account data (com.crm.cleared); "
        "other members and Matrix clients keep the history."
    ),
)
@authed(None)
async def clear_chat(request: web.Request, user: CrmUser) -> web.Response:
    body = await json_object(request)
    quota: dict[str, str] = {}
    result = await clear_for(request.app[CHAT], user, body.get("conversationId"), quota=quota)
    response = json_response(result)
    response.headers.update(quota)
    return response


@routes.get("/api/chat/employees")
@declare(
    "The people the user may start a chat with: active users of their company",
    tags=PEOPLE,
    query=EmployeesQuery,
    ok={200: (list[Employee], "A bare array")},
    errors=(400, 503),
    description="Answered from the index; the caller is not listed.",
)
@authed("employees")
async def employees(request: web.Request, user: CrmUser) -> web.Response:
    return json_response(await employees_of(request.app[CHAT], user, request.query))


@routes.post("/api/chat/ensure-project-chats")
@declare(
    "Make sure the caller is in every project conversation the CRM gave them",
    tags=CONVERSATIONS,
    ok={200: (EnsureProjectChatsResult, "Counted after any repair")},
    errors=(503,),
    description="Never creates a project; membership comes from the CRM directory.",
)
@authed("ensure-project-chats")
async def ensure_chats(request: web.Request, user: CrmUser) -> web.Response:
    return json_response(await ensure_project_chats(request.app[CHAT], user))


@routes.get("/api/chat/project-groups")
@declare(
    "The caller's project conversations",
    tags=CONVERSATIONS,
    ok={200: (ProjectGroups, "{success, conversations}")},
    errors=(503,),
)
@authed("conversations")
async def groups(request: web.Request, user: CrmUser) -> web.Response:
    return json_response(await project_groups(request.app[CHAT], user))


@routes.post("/api/chat/conversations/sync-projects")
@declare(
    "CRM admin/manager: pull the CRM directory again (pull mode only)",
    tags=CONVERSATIONS,
    ok={202: (DirectoryPullResult, "A pull was started")},
    errors=(409, 503),
    description="409 when no pull is configured: membership comes from the CRM.",
)
@authed("directory-pull")
async def sync_projects(request: web.Request, user: CrmUser) -> web.Response:
    return json_response(await request_pull(request.app[CHAT], user), status=202)


@routes.post("/api/chat/conversations/sync-project/{projectId}")
@declare(
    "CRM admin/manager: pull the CRM directory again for this project",
    tags=CONVERSATIONS,
    path=ProjectPath,
    ok={202: (DirectoryPullResult, "A pull was started")},
    errors=(409, 503),
)
@authed("directory-pull")
async def sync_project(request: web.Request, user: CrmUser) -> web.Response:
    project_id = request.match_info["projectId"]
    return json_response(await request_pull(request.app[CHAT], user, project_id), status=202)


@routes.post("/api/chat/conversations/add-member")
@declare(
    "CRM admin/manager: ask the directory for a member (never changed here)",
    tags=CONVERSATIONS,
    body=AddMemberBody,
    ok={202: (DirectoryPullResult, "A pull was started")},
    errors=(400, 409, 413, 503),
)
@authed("directory-pull")
async def add_member(request: web.Request, user: CrmUser) -> web.Response:
    body = await json_object(request)
    return json_response(await request_pull(request.app[CHAT], user, body=body), status=202)
