"""Messages, pages of them, and what a user sends or does to them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ...chat.serialize import MESSAGE_TYPES
from .base import Body, Query, Shape, absent, id_field, without_nul
from .people import MAX_QUERY, User

MessageType = Literal[MESSAGE_TYPES]  # type: ignore[valid-type]

MAX_SEARCH_LIMIT = 50
MAX_PAGE_LIMIT = 100  # history.MAX_LIMIT, checked by tests/test_api_contracts.py
MAX_PAGE_DEPTH = 5000  # history.MAX_PAGE_DEPTH, likewise
# A log cursor ("s." and a seq, chat/cursor.py) or, deprecated, a message id.
CURSOR_PATTERN = "^(s\\.[0-9]{1,18}|[A-Za-z0-9_-]+)$"
MAX_CONTENT = 20000
# The text is stored twice in the event (body and the CRM field), and Synapse refuses events
# over 64 KiB: keep the UTF-8 size well under half of that.
MAX_CONTENT_BYTES = 24 * 1024
MAX_ATTACHMENTS = 10
MAX_CLIENT_MESSAGE_ID = 128
MAX_MENTIONS = 50


def _fits(text: str) -> str:
    if len(text.encode("utf-8")) > MAX_CONTENT_BYTES:
        raise ValueError(
            f"content is too long (at most {MAX_CONTENT} characters and "
            f"{MAX_CONTENT_BYTES // 1024} KiB)"
        )
    return text


class Attachment(Shape):
    """An attachment as messages carry it (``GET /messages``, ``new_message``)."""

    filename: str = Field(description="The stored name (media id and extension)")
    originalName: str
    mimetype: str = Field(description="The type found in the bytes")
    size: int = Field(ge=0)
    url: str = Field(description="Absolute, signed for the reader (loads as a bare <img src>)")
    duration: float | None = Field(
        default=None, description="Seconds (audio and video), null when not known"
    )


class Upload(Attachment):
    """``POST /api/chat/upload``: the first file at the top level, in the bridge's own
    fields and in the CRM upload's (``fileUrl``, ``originalName``, ``mimeType``), and every
    file."""

    fileUrl: str = Field(description="Absolute signed URL; send it back as an attachment url")
    mimeType: str
    files: list[Attachment]
    attachments: list[Attachment]


class ReadMark(Shape):
    user: str
    readAt: str | None


class Quote(Shape):
    """The message a reply answers (enough to show it)."""

    id: str = Field(alias="_id")
    content: str | None
    sender: User | None


class Reaction(Shape):
    key: str
    count: int = Field(ge=1)
    users: list[str]
    me: bool


class Message(Shape):
    """``serialize.message_object`` with the relations of ``chat/enrich.py``; also the
    payload of the socket's ``new_message``, ``message_sent`` and ``message_update``."""

    id: str = Field(alias="_id")
    conversation: str
    conversationId: str
    sender: User
    content: str
    type: MessageType
    attachments: list[Attachment]
    readBy: list[ReadMark]
    createdAt: str | None
    updatedAt: str | None
    matrixRoomId: str | None
    eventId: str
    cursor: str | None = Field(
        default=None,
        description="The message's place in the conversation's log, for after=; in a socket "
        "new_message, null when not known yet",
    )
    edited: bool
    editedAt: str | None
    replyTo: Quote | None
    mentions: list[str]
    reactions: list[Reaction]
    threadId: str | None
    threadCount: int = Field(ge=0)
    threadLastReplyAt: str | None
    isPinned: bool


class PinResult(Message):
    """``pin-message``/``unpin-message``: the message at the top level (the seed's shape),
    and ``data`` with who did it, which the CRM messenger reads."""

    success: bool
    data: dict[str, Any] = Field(
        description="The message, with pinnedBy/pinnedAt or unpinnedBy/unpinnedAt"
    )


class PinnedMessages(Shape):
    success: bool
    data: list[Message] = Field(description="Message objects, newest pin first")


class MessagePage(Shape):
    messages: list[Message]
    hasMore: bool
    nextCursor: str | None


class SearchPage(Shape):
    messages: list[Message]
    hasMore: bool
    nextCursor: str | None = Field(description="Pass as cursor for the next page")
    count: int = Field(ge=0, description="Synapse's estimate")


class MarkReadResult(Shape):
    message: str
    messageIds: list[str] = absent()


class Deleted(Shape):
    message: str
    conversationId: str
    messageId: str


class MessageDeleted(Shape):
    """The socket's ``message_deleted``."""

    conversationId: str
    messageId: str


class Resync(Shape):
    """The socket's ``resync``: an event of this conversation was dropped; refetch it."""

    conversationId: str
    reason: Literal["overflow", "failed", "timeout"]


class ClearChatResult(Shape):
    message: str
    conversationId: str
    clearedAt: str = Field(description="When the cleared point's message was sent (or now)")
    messageId: str | None = Field(description="The last hidden message, null if none")


class UnreadCount(Shape):
    count: int = Field(ge=0, description="Sum of unreadCount over the user's conversations")


# Requests.


class ConversationPath(Query):
    conversationId: str = id_field()


class MediaPath(Query):
    server: str
    mediaId: str = id_field()


class MediaQuery(Query):
    """A signed URL (what answers and events hand out) needs no token."""

    u: str | None = Field(default=None, description="Signed URL: the CRM user it was handed to")
    exp: str | None = Field(
        default=None, description="Signed URL: expiry, epoch seconds (media.url_ttl)"
    )
    sig: str | None = Field(default=None, description="Signed URL: HMAC over the file, u and exp")
    token: str | None = Field(
        default=None, description="Deprecated: the JWT (leaks into logs and Referer)"
    )


class HistoryQuery(Query):
    """Checked by ``history.page_of`` itself (the hot path), with these bounds."""

    page: int = absent(ge=1, le=MAX_PAGE_DEPTH)
    limit: int = absent(ge=1, le=MAX_PAGE_LIMIT)
    before: str = id_field(default=None)
    after: str = Field(
        default=None,
        max_length=512,
        pattern=CURSOR_PATTERN,
        description="A cursor: a new_message's or a page's nextCursor (deprecated: a message id)",
    )


class ConversationRef(Body):
    conversationId: str = Field(min_length=1, max_length=512)


class AttachmentIn(Body):
    """An attachment in a send: a file from ``/api/chat/upload`` (its ``url`` or ``fileUrl``
    as answered), or a URL under ``attachments.import_from``, fetched by the bridge."""

    url: str = Field(min_length=1, max_length=4096)
    filename: str | None = Field(default=None, max_length=1024)
    originalName: str | None = Field(
        default=None, max_length=1024, description="The name shown for an imported file"
    )
    mimetype: Any = Field(default=None, description="Ignored: the bytes decide")
    size: Any = Field(default=None, description="Ignored: the bytes decide")
    duration: float | None = Field(
        default=None, ge=0, le=86400, allow_inf_nan=False, description="Seconds"
    )


class SendBody(Body):
    """REST ``/api/chat/send`` and the socket's ``send_message``: one model, one check."""

    conversationId: str = Field(min_length=1)
    content: str = Field(default="", max_length=MAX_CONTENT, description="Empty only with files")
    type: MessageType = "text"
    # null is "not given", as the seed's backend read it.
    attachments: list[AttachmentIn] | None = Field(default=None, max_length=MAX_ATTACHMENTS)
    clientMessageId: str | None = Field(
        default=None, min_length=1, max_length=MAX_CLIENT_MESSAGE_ID
    )
    replyTo: str | None = Field(default=None, min_length=1, description="The message answered")
    mentions: list[str] | None = Field(
        default=None, max_length=MAX_MENTIONS, description="CRM user ids of participants"
    )
    threadId: str | None = Field(
        default=None, min_length=1, description="The thread root's message id"
    )

    _content = field_validator("content")(_fits)

    @model_validator(mode="after")
    def _not_empty(self) -> SendBody:
        if self.type == "voice" and not self.attachments:
            raise ValueError("A voice message needs its audio file in attachments")
        if not self.content.strip() and not self.attachments:
            raise ValueError("content must not be empty")
        return self


class MarkAsRead(Query):
    """The socket's ``mark_as_read`` (a bare conversation id is accepted too)."""

    conversationId: str
    messageIds: list[str] | str | None = Field(
        default=None, description="Read up to the newest of these; the latest if none"
    )


class MarkReadBody(Body):
    conversationId: str = Field(min_length=1)
    messageId: str | None = Field(default=None, description="The latest message if not given")


class UploadChatForm(Body):
    """``/api/chat/upload/chat``: multipart/form-data, one or more ``file`` parts."""

    file: bytes = Field(json_schema_extra={"format": "binary", "type": "string"})
    conversationId: str
    content: str = absent(max_length=MAX_CONTENT)


class UploadForm(Body):
    file: bytes = Field(json_schema_extra={"format": "binary", "type": "string"})


class MessageRef(Body):
    """A message; ``conversationId``, when given, must be the message's conversation."""

    messageId: str = id_field()
    conversationId: str | None = Field(default=None, min_length=1, max_length=512)


class EditBody(MessageRef):
    content: str = Field(max_length=MAX_CONTENT, description="The new text; not empty")

    _content = field_validator("content")(_fits)

    @field_validator("content")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("content must not be empty")
        return value


class UpdateDurationBody(MessageRef):
    """``POST /api/chat/update-duration``: the CRM's page, after a voice note played."""

    attachmentIndex: int = Field(default=0, ge=0, lt=10, description="Which attachment")
    duration: float = Field(ge=0, le=86400, description="Seconds (a float)", allow_inf_nan=False)


class UpdateDurationResult(Shape):
    success: bool
    messageId: str
    attachmentIndex: int
    duration: float = Field(description="Seconds, as every later read of the message shows")
    changed: bool = Field(description="False when the message already had this duration")


class ReactBody(MessageRef):
    key: str = Field(min_length=1, max_length=100, description="The reaction, usually an emoji")

    _key = field_validator("key")(without_nul)


class SearchQuery(Query):
    q: str = Field(min_length=1, max_length=MAX_QUERY, description="Words to find")
    conversationId: str | None = Field(default=None, min_length=1, max_length=512)
    limit: int = Field(default=20, ge=1, le=MAX_SEARCH_LIMIT)
    cursor: str | None = Field(
        default=None, min_length=1, max_length=2048, description="nextCursor of the last page"
    )

    @field_validator("q")
    @classmethod
    def _words(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("q must not be blank")
        return value.strip()
