"""The OpenAPI 3 description of the facade, served at /api/openapi.json (docs at /api/docs).

Kept beside the handlers and checked against the router by the tests, so the two agree.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from aiohttp import web

from . import models

routes = web.RouteTableDef()

_NULLABLE_STR = {"type": ["string", "null"]}
_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "maxLength": 512}
# A log cursor ("s." and a seq, chat/cursor.py) or, deprecated, a message id.
_CURSOR = {"type": "string", "pattern": "^(s\\.[0-9]{1,18}|[A-Za-z0-9_-]+)$", "maxLength": 512}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# Relations on every message (chat/enrich.py); see docs/api.md.
MESSAGE_RELATION_FIELDS: dict[str, Any] = {
    "edited": {"type": "boolean"},
    "editedAt": _NULLABLE_STR,
    "replyTo": {
        "oneOf": [
            {
                "type": "object",
                "required": ["_id", "content", "sender"],
                "properties": {
                    "_id": {"type": "string"},
                    "content": _NULLABLE_STR,
                    "sender": {"oneOf": [_ref("User"), {"type": "null"}]},
                },
            },
            {"type": "null"},
        ]
    },
    "mentions": {"type": "array", "items": {"type": "string"}},
    "reactions": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["key", "count", "users", "me"],
            "properties": {
                "key": {"type": "string"},
                "count": {"type": "integer", "minimum": 1},
                "users": {"type": "array", "items": {"type": "string"}},
                "me": {"type": "boolean"},
            },
        },
    },
    "threadId": _NULLABLE_STR,
    "threadCount": {"type": "integer", "minimum": 0},
    "threadLastReplyAt": _NULLABLE_STR,
    "isPinned": {"type": "boolean"},
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["message", "errcode"],
        "properties": {
            "message": {"type": "string", "description": "A sentence for people"},
            "errcode": {"type": "string", "description": "A code for programs"},
            "retry_after_ms": {"type": "integer"},
            "retryAfter": {"type": "integer", "description": "429: seconds to wait"},
        },
    },
    "User": {
        "type": "object",
        "required": ["_id", "name", "email", "avatar"],
        "properties": {
            "_id": {
                "type": "string",
                "description": "CRM user id, or the mxid of a Matrix-only user",
            },
            "name": {"type": "string"},
            "email": _NULLABLE_STR,
            "avatar": _NULLABLE_STR,
        },
    },
    "DirectoryUser": {
        "allOf": [
            _ref("User"),
            {
                "type": "object",
                "required": ["role", "isOnline", "lastSeen"],
                "properties": {
                    "role": {"type": "string"},
                    "isOnline": {"type": "boolean"},
                    "lastSeen": _NULLABLE_STR,
                    "matrixId": _NULLABLE_STR,
                },
            },
        ]
    },
    "ProjectRef": {
        "type": "object",
        "required": ["_id", "name", "emoji", "color"],
        "properties": {
            "_id": {"type": "string"},
            "name": {"type": "string"},
            "emoji": _NULLABLE_STR,
            "color": _NULLABLE_STR,
        },
    },
    "Project": {
        "allOf": [
            _ref("ProjectRef"),
            {
                "type": "object",
                "required": ["members", "conversationId"],
                "properties": {
                    "description": _NULLABLE_STR,
                    "members": {"type": "array", "items": _ref("User")},
                    "createdBy": _NULLABLE_STR,
                    "archived": {"type": "boolean"},
                    "conversationId": _NULLABLE_STR,
                    "createdAt": _NULLABLE_STR,
                    "updatedAt": _NULLABLE_STR,
                },
            },
        ]
    },
    "Message": {
        "type": "object",
        "required": [
            "_id",
            "conversation",
            "conversationId",
            "sender",
            "content",
            "type",
            "attachments",
            "readBy",
            "createdAt",
            "updatedAt",
            "matrixRoomId",
            "eventId",
            *MESSAGE_RELATION_FIELDS,
        ],
        "properties": {
            "_id": {"type": "string"},
            "conversation": {"type": "string"},
            "conversationId": {"type": "string"},
            "sender": _ref("User"),
            "content": {"type": "string"},
            "type": {"type": "string", "enum": ["text", "file", "image", "link", "voice"]},
            "attachments": {"type": "array", "items": _ref("Attachment")},
            "readBy": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["user", "readAt"],
                    "properties": {"user": {"type": "string"}, "readAt": _NULLABLE_STR},
                },
            },
            "createdAt": _NULLABLE_STR,
            "updatedAt": _NULLABLE_STR,
            "matrixRoomId": _NULLABLE_STR,
            "eventId": {"type": "string"},
            "cursor": {"type": "string"},
            **MESSAGE_RELATION_FIELDS,
        },
    },
    "Conversation": {
        "type": "object",
        "required": [
            "_id",
            "type",
            "name",
            "participants",
            "project",
            "lastMessage",
            "lastActivity",
            "unreadCount",
            "matrixRoomId",
        ],
        "properties": {
            "_id": {"type": "string"},
            "type": {"type": "string", "enum": ["direct", "project"]},
            "name": _NULLABLE_STR,
            "participants": {"type": "array", "items": _ref("Participant")},
            "project": {"oneOf": [_ref("ProjectRef"), {"type": "null"}]},
            "lastMessage": {"oneOf": [_ref("Message"), {"type": "null"}]},
            "lastActivity": _NULLABLE_STR,
            "unreadCount": {
                "type": "integer",
                "minimum": 0,
                "maximum": 100,
                "description": "Unread messages, counted up to 100 (show 99+ at 100)",
            },
            "createdAt": _NULLABLE_STR,
            "updatedAt": _NULLABLE_STR,
            "matrixRoomId": {"type": "string"},
        },
    },
    "MessagePage": {
        "type": "object",
        "required": ["messages", "hasMore", "nextCursor"],
        "properties": {
            "messages": {"type": "array", "items": _ref("Message")},
            "hasMore": {"type": "boolean"},
            "nextCursor": _NULLABLE_STR,
        },
    },
}

_RATE_HEADERS = {
    name: {"schema": {"type": "integer"}, "description": desc}
    for name, desc in (
        ("X-RateLimit-Limit", "Requests allowed per window for this route"),
        ("X-RateLimit-Remaining", "Requests left in this window"),
        ("X-RateLimit-Reset", "Seconds until the window ends"),
    )
}

_ERRORS = {
    "400": "Malformed request (M_BAD_JSON, M_NOT_JSON, M_INVALID_PARAM)",
    "401": "Missing, malformed, expired or forged token (M_MISSING_TOKEN, M_UNKNOWN_TOKEN)",
    "403": (
        "A good token whose user the directory does not know yet or deactivated "
        "(M_USER_NOT_SYNCED, M_USER_DEACTIVATED), or not allowed (M_FORBIDDEN)"
    ),
    "404": "Not found, or not a participant (M_NOT_FOUND)",
    "409": "Conflict (M_CONFLICT)",
    "413": "Body or file too large (M_TOO_LARGE)",
    "415": "Content type not accepted (M_UNSUPPORTED_TYPE)",
    "429": "Rate limited (M_LIMIT_EXCEEDED), see Retry-After",
    "503": "Homeserver unavailable (M_HOMESERVER_UNAVAILABLE)",
}


def _error(code: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _ERRORS[code],
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if code == "400":
        # aiohttp's HTTP parser refuses over-long request lines before any handler runs.
        response["content"]["text/plain"] = {"schema": {"type": "string"}}
    if code == "429":
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}}, **_RATE_HEADERS}
    return response


def _ok(status: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        status: {
            "description": description,
            "headers": dict(_RATE_HEADERS),
            "content": {"application/json": {"schema": schema}},
        }
    }


def _op(
    summary: str,
    ok: dict[str, Any],
    errors: tuple[str, ...],
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{"bearerAuth": []}],
        "responses": {**ok, **{c: _error(c) for c in ("401", "403", "429", *errors)}},
    }
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


_CONVERSATION_LIST = {"type": "array", "items": _ref("Conversation")}
_SEND_BODY = {
    "type": "object",
    "required": ["conversationId", "content"],
    "properties": {
        "conversationId": {"type": "string"},
        "content": {"type": "string", "maxLength": 20000},
        "type": {
            "type": "string",
            "enum": ["text", "file", "image", "link", "voice"],
            "default": "text",
            "description": "voice: Matrix m.audio with MSC3245 (Element plays it as a voice "
            "message); its first attachment is the audio, with duration in seconds",
        },
        "attachments": {"type": "array", "maxItems": 10, "items": _ref("AttachmentIn")},
        "clientMessageId": {"type": "string", "minLength": 1, "maxLength": 128},
        "replyTo": {"type": "string", "description": "The message id answered"},
        "mentions": {
            "type": "array",
            "maxItems": 50,
            "items": {"type": "string"},
            "description": "CRM user ids of participants",
        },
        "threadId": {"type": "string", "description": "The thread root's message id"},
    },
}
_MARK_READ_BODY = {
    "type": "object",
    "required": ["conversationId"],
    "properties": {"conversationId": {"type": "string"}, "messageId": {"type": "string"}},
}
_DELETED = {
    "type": "object",
    "required": ["message", "conversationId", "messageId"],
    "properties": {
        "message": {"type": "string"},
        "conversationId": {"type": "string"},
        "messageId": {"type": "string"},
    },
}


def _relation_op(summary: str, model: type, ok: dict[str, Any], description: str) -> dict:
    return {
        "post": _op(
            summary,
            ok,
            ("400", "404", "413", "503"),
            body=models.schema(model),
            description=description,
        )
    }


_UPDATED = _ok("200", _ref("Message"), "The message as it is now")

PATHS: dict[str, Any] = {
    "/api/chat/conversations": {
        "get": _op(
            "All conversations of the user, most recent activity first",
            _ok("200", _CONVERSATION_LIST, "A bare array of conversations"),
            ("503",),
        )
    },
    "/api/chat/project": {
        "get": _op(
            "The user's project conversations",
            _ok("200", _CONVERSATION_LIST, "A bare array of project conversations"),
            ("503",),
        )
    },
    "/api/chat/direct": {
        "get": _op(
            "The user's direct conversations",
            _ok("200", _CONVERSATION_LIST, "A bare array of direct conversations"),
            ("503",),
        )
    },
    "/api/chat/messages/{conversationId}": {
        "get": _op(
            "A page of messages, served from the homeserver",
            _ok("200", _ref("MessagePage"), "Messages oldest to newest within the page"),
            ("400", "404", "503"),
            description=(
                "page=1 holds the newest `limit` messages; page 2 the ones before. "
                "Alternatively `before` a message id, or `after` a cursor (a `new_message`'s "
                "or a page's `nextCursor`, an opaque token of the conversation's log; a "
                "message id is still accepted there for one release, deprecated); "
                "`nextCursor` continues."
            ),
            params=[
                {"name": "conversationId", "in": "path", "required": True, "schema": _ID},
                {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                },
                {"name": "before", "in": "query", "schema": _ID},
                {"name": "after", "in": "query", "schema": _CURSOR},
            ],
        )
    },
    "/api/chat/send": {
        "post": _op(
            "Send a message as the user",
            _ok("201", _ref("Message"), "The message, with conversationId and cursor"),
            ("400", "404", "409", "413", "503"),
            body=_SEND_BODY,
            description="clientMessageId makes a retry idempotent: one message, same response.",
        )
    },
    "/api/chat/mark-read": {
        "post": _op(
            "Mark messages read up to messageId (or the latest)",
            _ok(
                "200",
                {
                    "type": "object",
                    "required": ["message"],
                    "properties": {
                        "message": {"type": "string"},
                        "messageIds": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "Messages marked as read",
            ),
            ("400", "404", "413", "503"),
            body=_MARK_READ_BODY,
        )
    },
    "/api/chat/direct/create": {
        "post": _op(
            "The direct conversation with another user, created if missing",
            {
                **_ok("200", _ref("DirectCreated"), "The existing conversation"),
                **_ok("201", _ref("DirectCreated"), "A new conversation"),
            },
            ("400", "404", "413", "503"),
            body=models.schema(models.DirectCreateBody),
        )
    },
    "/api/chat/upload": {
        "post": {
            **_op(
                "Upload files to the Matrix media repository",
                _ok("201", _ref("Upload"), "Attachment objects for /api/chat/send"),
                ("400", "413", "415", "503"),
                description="Types are checked by content against api.upload_types.",
            ),
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        }
                    }
                },
            },
        }
    },
    "/api/chat/media/{server}/{mediaId}": {
        "get": {
            **_op(
                "Download an attachment: a signed URL as answers hand out (no token), or "
                "the Bearer header (?token= is deprecated)",
                {
                    "200": {
                        "description": "The file",
                        "headers": dict(_RATE_HEADERS),
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    }
                },
                ("404", "503"),
                params=[
                    {
                        "name": "server",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {"name": "mediaId", "in": "path", "required": True, "schema": _ID},
                    *(
                        {
                            "name": name,
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": desc,
                        }
                        for name, desc in (
                            ("u", "Signed URL: the CRM user it was handed to"),
                            ("exp", "Signed URL: expiry, epoch seconds (media.url_ttl)"),
                            ("sig", "Signed URL: HMAC over the file, u and exp"),
                            ("token", "Deprecated: the JWT (leaks into logs and Referer)"),
                        )
                    ),
                ],
            ),
        }
    },
    "/api/chat/edit-message": _relation_op(
        "Edit a message (m.replace); only its sender may",
        models.EditBody,
        _UPDATED,
        "403 when the message is someone else's; 400 for an empty text.",
    ),
    "/api/chat/delete-message": _relation_op(
        "Delete a message (a redaction)",
        models.MessageRef,
        _ok("200", _DELETED, "Deleted"),
        "Your own, or in a project any message where your power level allows redactions "
        "(project admins and managers); in a DM only your own; else 403.",
    ),
    "/api/chat/react": _relation_op(
        "React to a message (m.annotation); a second time changes nothing",
        models.ReactBody,
        _UPDATED,
        "One reaction per user and key.",
    ),
    "/api/chat/unreact": _relation_op(
        "Take your reaction back (redacts your annotation)",
        models.ReactBody,
        _UPDATED,
        "Nothing to take back is no error.",
    ),
    "/api/chat/pin-message": _relation_op(
        "Pin a message (m.room.pinned_events)",
        models.MessageRef,
        _ok("200", _ref("PinResult"), "The message, and data with pinnedBy"),
        "Any member of a project or DM may pin; the room's power levels decide (403 "
        "otherwise). Sockets hear message_pinned.",
    ),
    "/api/chat/unpin-message": _relation_op(
        "Unpin a message",
        models.MessageRef,
        _ok("200", _ref("PinResult"), "The message, and data with unpinnedBy"),
        "Who may unpin follows the room's power levels (403 otherwise). Sockets hear "
        "message_unpinned.",
    ),
    "/api/chat/pinned-messages/{conversationId}": {
        "get": _op(
            "The conversation's pinned messages, newest pin first",
            _ok("200", _ref("PinnedMessages"), "{success, data: full message objects}"),
            ("404", "503"),
            params=[{"name": "conversationId", "in": "path", "required": True, "schema": _ID}],
        )
    },
    "/api/users": {
        "get": _op(
            "The directory: every other active user, with Matrix presence",
            _ok("200", {"type": "array", "items": _ref("DirectoryUser")}, "Users"),
            ("503",),
        )
    },
    "/api/projects": {
        "get": _op(
            "The user's projects",
            _ok("200", {"type": "array", "items": _ref("Project")}, "Projects"),
            ("503",),
        )
    },
    "/api/auth/me": {
        "get": _op(
            "The authenticated user",
            _ok("200", _ref("DirectoryUser"), "The user"),
            ("503",),
        )
    },
}


# Routes whose bodies and answers come from pydantic models (bridge/api/models.py).
SCHEMAS.update(
    # Every user object; participants and employees add presence (issue 19).
    User=models.schema(models.UserObject),
    Participant=models.schema(models.Participant),
    Employee=models.schema(models.Employee),
    EnsureProjectChatsResult=models.schema(models.EnsureProjectChatsResult),
    DirectoryPullResult=models.schema(models.DirectoryPullResult),
    ProjectGroups={
        **models.schema(models.ProjectGroups),
        "properties": {
            "success": {"type": "boolean"},
            "conversations": {"type": "array", "items": _ref("Conversation")},
        },
    },
    PinnedMessages={
        **models.schema(models.PinnedMessages),
        "properties": {
            "success": {"type": "boolean"},
            "data": {"type": "array", "items": _ref("Message")},
        },
    },
    PinResult={"allOf": [_ref("Message"), models.schema(models.PinResult)]},
    DirectCreated={"allOf": [_ref("Conversation"), models.schema(models.DirectCreated)]},
    UnreadCount=models.schema(models.UnreadCount),
    OnlineUser=models.schema(models.OnlineUser),
    ClearChatResult=models.schema(models.ClearChatResult),
    Attachment=models.schema(models.Attachment),
    AttachmentIn=models.schema(models.AttachmentIn),
    Upload=models.schema(models.UploadResult),
    UpdateDurationResult=models.schema(models.UpdateDurationResult),
    SearchPage={
        "type": "object",
        "required": ["messages", "hasMore", "nextCursor", "count"],
        "properties": {
            "messages": {"type": "array", "items": _ref("Message")},
            "hasMore": {"type": "boolean"},
            "nextCursor": {**_NULLABLE_STR, "description": "Pass as cursor for the next page"},
            "count": {"type": "integer", "minimum": 0, "description": "Synapse's estimate"},
        },
    },
)
PATHS.update(
    {
        "/api/chat/conversations/conversation/{conversationId}": {
            "get": _op(
                "One conversation, in the same shape as in the list",
                _ok("200", _ref("Conversation"), "The conversation"),
                ("404", "503"),
                params=[{"name": "conversationId", "in": "path", "required": True, "schema": _ID}],
            )
        },
        "/api/chat/unread-count": {
            "get": _op(
                "Unread messages over all the user's conversations (from the index)",
                _ok("200", _ref("UnreadCount"), "The sum of the list's unreadCount"),
                ("503",),
            )
        },
        "/api/chat/online-users": {
            "get": _op(
                "Participants of the user's conversations who are online now",
                _ok("200", {"type": "array", "items": _ref("OnlineUser")}, "Online people"),
                ("503",),
            )
        },
        "/api/chat/search": {
            "get": _op(
                "Messages matching q in the user's conversations (the homeserver's /search)",
                _ok("200", _ref("SearchPage"), "Matches, newest first"),
                ("400", "404", "503"),
                params=models.query_params(models.SearchQuery),
            )
        },
        "/api/chat/employees": {
            "get": _op(
                "The people the user may start a chat with: active users of their company",
                _ok("200", {"type": "array", "items": _ref("Employee")}, "A bare array"),
                ("400", "503"),
                params=models.query_params(models.EmployeesQuery),
                description="Answered from the index; the caller is not listed.",
            )
        },
        "/api/chat/ensure-project-chats": {
            "post": _op(
                "Make sure the caller is in every project conversation the CRM gave them",
                _ok("200", _ref("EnsureProjectChatsResult"), "Counted after any repair"),
                ("503",),
                description="Never creates a project; membership comes from the CRM directory.",
            )
        },
        "/api/chat/project-groups": {
            "get": _op(
                "The caller's project conversations",
                _ok("200", _ref("ProjectGroups"), "{success, conversations}"),
                ("503",),
            )
        },
        "/api/chat/conversations/sync-projects": {
            "post": _op(
                "CRM admin/manager: pull the CRM directory again (pull mode only)",
                _ok("202", _ref("DirectoryPullResult"), "A pull was started"),
                ("409", "503"),
                description="409 when no pull is configured: membership comes from the CRM.",
            )
        },
        "/api/chat/conversations/sync-project/{projectId}": {
            "post": _op(
                "CRM admin/manager: pull the CRM directory again for this project",
                _ok("202", _ref("DirectoryPullResult"), "A pull was started"),
                ("409", "503"),
                params=[{"name": "projectId", "in": "path", "required": True, "schema": _ID}],
            )
        },
        "/api/chat/conversations/add-member": {
            "post": _op(
                "CRM admin/manager: ask the directory for a member (never changed here)",
                _ok("202", _ref("DirectoryPullResult"), "A pull was started"),
                ("400", "409", "413", "503"),
                body=models.schema(models.AddMemberBody),
            )
        },
        "/api/chat/clear-chat": {
            "post": _op(
                "Hide the conversation's history up to now, for the calling user only",
                _ok("200", _ref("ClearChatResult"), "The point up to which history is hidden"),
                ("400", "404", "413", "503"),
                body=models.schema(models.ConversationRef),
                description=(
                    "Stored as the user's Matrix room account data (com.crm.cleared); "
                    "other members and Matrix clients keep the history."
                ),
            )
        },
        "/api/chat/update-duration": _relation_op(
            "Set a voice note's duration (seconds); only its sender may",
            models.UpdateDurationBody,
            _ok("200", _ref("UpdateDurationResult"), "The duration every later read shows"),
            "Stored in Matrix as an m.replace edit of the message (info.duration in ms). "
            "The same value again sends nothing. 403 for someone else's message.",
        ),
        "/api/chat/upload/chat": {
            "post": {
                **_op(
                    "Upload files and post them as one message",
                    _ok("201", _ref("Message"), "The message, as /api/chat/send answers"),
                    ("400", "404", "413", "415", "503"),
                    description="Send's rate limit and checks; types are checked by content.",
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["file", "conversationId"],
                                "properties": {
                                    "file": {"type": "string", "format": "binary"},
                                    "conversationId": {"type": "string"},
                                    "content": {"type": "string", "maxLength": 20000},
                                },
                            }
                        }
                    },
                },
            }
        },
    }
)


def spec() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "CRM chat facade",
            "version": "1.0.0",
            "description": "The seed backend's REST API, served from Matrix. See docs/api.md.",
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


@routes.get("/api/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(spec())


@routes.get("/api/docs")
async def docs(request: web.Request) -> web.Response:
    html = resources.files("bridge.api").joinpath("docs.html").read_text("utf-8")
    return web.Response(text=html, content_type="text/html")
