"""Request and response models of the newer routes (relations, search, clear-chat, ...): one
definition for validation (REST and socket alike) and for the OpenAPI schema.

``parse`` turns pydantic's errors into the facade's 400 ``{message, errcode}``;
``schema``/``query_params`` give the OpenAPI entries (bridge/api/openapi.py).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import InvalidParam

M = TypeVar("M", bound=BaseModel)

MAX_QUERY = 256
MAX_SEARCH_LIMIT = 50
_REF = "#/components/schemas/{model}"
_ID = Field(min_length=1, max_length=512, pattern="^[A-Za-z0-9_-]+$")


class _Body(BaseModel):
    """A JSON body: strict types (no "5" for 5), unknown fields ignored as elsewhere."""

    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class _Query(BaseModel):
    """Query parameters arrive as strings: numbers are parsed from them."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ConversationRef(_Body):
    conversationId: str = Field(min_length=1, max_length=512)


class MessageRef(_Body):
    """A message; ``conversationId``, when given, must be the message's conversation."""

    messageId: str = _ID
    conversationId: str | None = Field(default=None, min_length=1, max_length=512)


class EditBody(MessageRef):
    content: str = Field(max_length=20000, description="The new text; not empty")


class ReactBody(MessageRef):
    key: str = Field(min_length=1, max_length=100, description="The reaction, usually an emoji")

    @field_validator("key")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        return _without_nul(value)


class UpdateDurationBody(MessageRef):
    """``POST /api/chat/update-duration``: the CRM's page, after a voice note played."""

    attachmentIndex: int = Field(default=0, ge=0, lt=10, description="Which attachment")
    duration: float = Field(ge=0, le=86400, description="Seconds (a float)", allow_inf_nan=False)


class UpdateDurationResult(_Body):
    success: bool
    messageId: str
    attachmentIndex: int
    duration: float = Field(description="Seconds, as every later read of the message shows")
    changed: bool = Field(description="False when the message already had this duration")


class Attachment(_Body):
    """An attachment as messages carry it (``GET /messages``, ``new_message``)."""

    url: str = Field(description="Absolute, signed for the reader (loads as a bare <img src>)")
    filename: str = Field(description="The stored name (media id and extension)")
    originalName: str
    mimetype: str = Field(description="The type found in the bytes")
    size: int = Field(ge=0)
    duration: float | None = Field(
        default=None, description="Seconds (audio and video), null when not known"
    )


class AttachmentIn(_Body):
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


class UploadResult(_Body):
    """``POST /api/chat/upload``: the first file at the top level, in the bridge's own
    fields and in the CRM upload's (``fileUrl``, ``originalName``, ``mimeType``)."""

    fileUrl: str = Field(description="Absolute signed URL; send it back as an attachment url")
    originalName: str
    mimeType: str
    url: str
    filename: str
    mimetype: str
    size: int
    files: list[Attachment]
    attachments: list[Attachment]


class ClearChatResult(_Body):
    message: str
    conversationId: str
    clearedAt: str = Field(description="When the cleared point's message was sent (or now)")
    messageId: str | None = Field(description="The last hidden message, null if none")


class UnreadCount(_Body):
    count: int = Field(ge=0, description="Sum of unreadCount over the user's conversations")


class OnlineUser(_Body):
    id: str = Field(alias="_id", description="CRM user id, or the mxid of a Matrix-only user")
    name: str
    avatar: str | None
    lastSeen: str | None


class SearchQuery(_Query):
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
            raise ValueError("must not be blank")
        return value.strip()


def _without_nul(value: str) -> str:
    # No database stores it in text, and no person types it.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def parse(model: type[M], data: Any) -> M:
    """The validated model, or InvalidParam naming the first field that is wrong."""
    if issubclass(model, _Body) and not isinstance(data, dict):
        raise InvalidParam("The request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "body"
        if first.get("type") == "missing":
            raise InvalidParam(f"{field} is required") from e
        raise InvalidParam(f"{field}: {first.get('msg', 'is invalid')}") from e


def schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema (2020-12, as OpenAPI 3.1 uses)."""
    out = model.model_json_schema(by_alias=True, ref_template=_REF)
    out.pop("title", None)
    for prop in out.get("properties", {}).values():
        prop.pop("title", None)
    return out


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """An optional query parameter is absent, never null: drop the null branch."""
    prop = dict(prop)
    variants = [v for v in prop.pop("anyOf", []) if v.get("type") != "null"]
    if len(variants) == 1:
        prop.update(variants[0])
    prop.pop("title", None)
    if prop.get("default", 0) is None:
        del prop["default"]
    return prop


def query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    out = schema(model)
    required = set(out.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": _not_null(prop)}
        for name, prop in out["properties"].items()
    ]


# The CRM messenger's routes and events (docs/frontend-guide.md, "Porting a frontend...").
class UserObject(_Body):
    """Every person the facade or the socket names (senders, participants, typers...)."""

    id: str = Field(alias="_id", description="CRM user id, or the mxid of a Matrix-only user")
    name: str
    firstName: str
    lastName: str = Field(description='"" when unknown (a Matrix-only user)')
    email: str | None
    avatar: str | None
    profileImage: str | None = Field(description="The CRM's picture URL (else the avatar)")
    position: str | None = Field(description="Job title, from the CRM directory")
    isGuest: bool | None = Field(
        default=None,
        description="Matrix-only users: true for a guest from another homeserver "
        "(docs/directory.md, 'Guests from other homeservers'); absent for CRM users",
    )
    homeserver: str | None = Field(
        default=None, description="Matrix-only users: the server of their Matrix id"
    )


class Participant(UserObject):
    isOnline: bool = Field(description="A socket open, or online on Matrix")
    lastSeen: str | None


class Employee(Participant):
    pass


class EmployeesQuery(_Query):
    q: str | None = Field(
        default=None, max_length=MAX_QUERY, description="Words the name, email or position has"
    )
    limit: int = Field(default=500, ge=1, le=2000)

    @field_validator("q")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        return None if value is None else _without_nul(value)


class EnsureProjectChatsResult(_Body):
    success: bool
    conversations: int = Field(ge=0, description="The caller's project conversations")
    repaired: int = Field(ge=0, description="Of which the caller was just joined to")


class ProjectGroups(_Body):
    success: bool
    conversations: list[dict[str, Any]] = Field(description="Conversation objects")


class DirectCreateBody(_Body):
    userId: str | int | None = Field(default=None, description="The other CRM user")
    participantId: str | int | None = Field(default=None, description="Seed-era name of userId")

    @field_validator("userId", "participantId")
    @classmethod
    def _no_nul(cls, value: str | int | None) -> str | int | None:
        return _without_nul(value) if isinstance(value, str) else value


class AddMemberBody(_Body):
    projectId: str | int
    userId: str | int


class DirectCreated(_Body):
    """``POST /direct/create``: the conversation at the top level (the seed's shape), and
    again in ``data`` (the CRM messenger's)."""

    success: bool
    data: dict[str, Any] = Field(description="The same conversation object")


class PinResult(_Body):
    success: bool
    data: dict[str, Any] = Field(
        description="The message, with pinnedBy/unpinnedBy (a user object) and the time"
    )


class DirectoryPullResult(_Body):
    success: bool
    message: str
    projectId: str | None = None


class PinnedMessages(_Body):
    success: bool
    data: list[dict[str, Any]] = Field(description="Message objects, newest pin first")


class RoomName(_Query):
    """``join_room``/``leave_room``: a bare string, or ``{room}``."""

    room: str = Field(min_length=1, max_length=200, pattern="^(user|company)_[^\\s]+$")


class AdminEvent(_Body):
    """``POST /api/admin/v1/events``: the CRM backend's own event, to the sockets of one
    user, one company, or a room the CRM named (``user_<id>`` / ``company_<id>``)."""

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)

    event: str = Field(min_length=1, max_length=100, pattern="^[A-Za-z][A-Za-z0-9_:.-]*$")
    data: Any = None
    room: str | None = Field(default=None, min_length=1, max_length=200)
    userId: str | int | None = None
    companyId: str | int | None = None


class AdminEventResult(_Body):
    success: bool
    room: str


class MessagePinned(_Body):
    conversationId: str
    messageId: str
    pinnedBy: UserObject
    pinnedAt: str


class MessageUnpinned(_Body):
    conversationId: str
    messageId: str
    unpinnedBy: UserObject


class ChatCleared(_Body):
    conversationId: str
    clearedBy: str = Field(description="The CRM user id who cleared it")
