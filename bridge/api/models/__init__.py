"""Every request and response shape of the facade, declared once (issue 19).

Requests are validated with these models (``parse``), by REST and socket handlers alike;
the OpenAPI document (``bridge/api/openapi.py``) is generated from them through each route's
declaration (``bridge/api/contract.py``). Responses are described, not validated at run
time: see contract.py for why.

One module per resource: ``people``, ``messages``, ``conversations``; ``base`` holds the
three kinds of model (``Body``, ``Query``, ``Shape``) and ``parse``. This file only
re-exports them. A new shape goes into its resource's module (a ``_Body`` of the old single
models.py is a ``Body`` for requests and a ``Shape`` for answers and events), is exported
here, and is named by its route's ``declare`` (contract.py); nothing is written into
openapi.py.
"""

from __future__ import annotations

from .base import (
    Body,
    Error,
    Query,
    Shape,
    absent,
    id_field,
    parse,
)
from .conversations import (
    Conversation,
    DirectBody,
)
from .messages import (
    CURSOR_PATTERN,
    MAX_ATTACHMENTS,
    MAX_CLIENT_MESSAGE_ID,
    MAX_CONTENT,
    MAX_CONTENT_BYTES,
    MAX_MENTIONS,
    MAX_PAGE_DEPTH,
    MAX_PAGE_LIMIT,
    MAX_QUERY,
    MAX_SEARCH_LIMIT,
    Attachment,
    AttachmentIn,
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
    MediaQuery,
    Message,
    MessageDeleted,
    MessagePage,
    MessageRef,
    Quote,
    ReactBody,
    Reaction,
    ReadMark,
    Resync,
    SearchPage,
    SearchQuery,
    SendBody,
    UnreadCount,
    UpdateDurationBody,
    UpdateDurationResult,
    Upload,
    UploadChatForm,
    UploadForm,
)
from .people import (
    DirectoryUser,
    OnlineUser,
    Project,
    ProjectRef,
    User,
)

__all__ = [
    "CURSOR_PATTERN",
    "MAX_ATTACHMENTS",
    "MAX_CLIENT_MESSAGE_ID",
    "MAX_CONTENT",
    "MAX_CONTENT_BYTES",
    "MAX_MENTIONS",
    "MAX_PAGE_DEPTH",
    "MAX_PAGE_LIMIT",
    "MAX_QUERY",
    "MAX_SEARCH_LIMIT",
    "Attachment",
    "AttachmentIn",
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
    "MediaQuery",
    "Message",
    "MessageDeleted",
    "MessagePage",
    "MessageRef",
    "OnlineUser",
    "Project",
    "ProjectRef",
    "Query",
    "Quote",
    "ReactBody",
    "Reaction",
    "ReadMark",
    "Resync",
    "SearchPage",
    "SearchQuery",
    "SendBody",
    "Shape",
    "UnreadCount",
    "UpdateDurationBody",
    "UpdateDurationResult",
    "Upload",
    "UploadChatForm",
    "UploadForm",
    "User",
    "absent",
    "id_field",
    "parse",
]
