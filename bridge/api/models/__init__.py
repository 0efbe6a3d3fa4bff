"""Every request and response shape of the facade, declared once (issue 19).

Requests are validated with these models (``parse``), by REST and socket handlers alike;
the OpenAPI document (``bridge/api/openapi.py``) is generated from them through each route's
declaration (``bridge/api/contract.py``). Responses are described, not validated at run
time: see contract.py for why.

One module per resource: ``people``, ``messages``, ``conversations``; ``base`` holds the
three kinds of model (``Body``, ``Query``, ``Shape``) and ``parse``.
"""

from __future__ import annotations

from .base import Body, Error, Query, Shape, absent, id_field, parse
from .conversations import Conversation, DirectBody
from .messages import (
    MAX_ATTACHMENTS,
    MAX_CONTENT,
    MAX_CONTENT_BYTES,
    MAX_QUERY,
    MAX_SEARCH_LIMIT,
    Attachment,
    AttachmentRef,
    ClearChatResult,
    ConversationPath,
    ConversationRef,
    Deleted,
    EditBody,
    HistoryQuery,
    MarkAsRead,
    MarkReadBody,
    MarkReadResult,
    MediaPath,
    Message,
    MessageDeleted,
    MessagePage,
    MessageRef,
    ReactBody,
    Resync,
    SearchPage,
    SearchQuery,
    SendBody,
    UnreadCount,
    Upload,
    UploadChatForm,
    UploadForm,
)
from .people import DirectoryUser, OnlineUser, Project, ProjectRef, User

__all__ = [
    "MAX_ATTACHMENTS",
    "MAX_CONTENT",
    "MAX_CONTENT_BYTES",
    "MAX_QUERY",
    "MAX_SEARCH_LIMIT",
    "Attachment",
    "AttachmentRef",
    "Body",
    "ClearChatResult",
    "Conversation",
    "ConversationPath",
    "ConversationRef",
    "Deleted",
    "DirectBody",
    "DirectoryUser",
    "EditBody",
    "Error",
    "HistoryQuery",
    "MarkAsRead",
    "MarkReadBody",
    "MarkReadResult",
    "MediaPath",
    "Message",
    "MessageDeleted",
    "MessagePage",
    "MessageRef",
    "OnlineUser",
    "Project",
    "ProjectRef",
    "Query",
    "ReactBody",
    "Resync",
    "SearchPage",
    "SearchQuery",
    "SendBody",
    "Shape",
    "UnreadCount",
    "Upload",
    "UploadChatForm",
    "UploadForm",
    "User",
    "absent",
    "id_field",
    "parse",
]
