"""Conversations: the list's objects, and opening a direct one."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import Body, Query, Shape, id_field, tidy, without_nul
from .messages import Message
from .people import Participant, ProjectRef


class Conversation(Shape):
    """``serialize.conversation_object``: an entry of the list, and every answer that is one
    conversation (``/direct/create``, ``/conversations/conversation/{id}``)."""

    id: str = Field(alias="_id")
    type: Literal["direct", "project"]
    name: str | None
    participants: list[Participant]
    project: ProjectRef | None
    lastMessage: Message | None
    lastActivity: str | None
    unreadCount: int = Field(
        ge=0, le=100, description="Unread messages, counted up to 100 (show 99+ at 100)"
    )
    createdAt: str | None = None
    updatedAt: str | None = None
    matrixRoomId: str


def _either_id(schema: dict[str, Any]) -> None:
    tidy(schema)
    schema["anyOf"] = [{"required": ["userId"]}, {"required": ["participantId"]}]


class DirectBody(Body):
    """The other CRM user, as ``userId`` or (the seed's other name) ``participantId``."""

    model_config = {**Body.model_config, "json_schema_extra": _either_id}

    userId: str | int | None = Field(default=None, description="The other CRM user")
    participantId: str | int | None = Field(default=None, description="Same as userId")

    @field_validator("userId", "participantId")
    @classmethod
    def _no_nul(cls, value: str | int | None) -> str | int | None:
        return without_nul(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one(self) -> DirectBody:
        if self.userId is None and self.participantId is None:
            raise ValueError("userId is required")
        return self

    @property
    def other(self) -> str:
        return str(self.userId if self.userId is not None else self.participantId)


class DirectCreated(Conversation):
    """``POST /direct/create``: the conversation at the top level (the seed's shape), and
    again in ``data`` (the CRM messenger's)."""

    success: bool
    data: Conversation = Field(description="The same conversation object")


class ProjectGroups(Shape):
    success: bool
    conversations: list[Conversation]


class EnsureProjectChatsResult(Shape):
    success: bool
    conversations: int = Field(ge=0, description="The caller's project conversations")
    repaired: int = Field(ge=0, description="Of which the caller was just joined to")


class ProjectPath(Query):
    projectId: str = id_field()


class AddMemberBody(Body):
    projectId: str | int
    userId: str | int


class DirectoryPullResult(Shape):
    success: bool
    message: str
    projectId: str | None = None
