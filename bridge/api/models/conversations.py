"""Conversations: the list's objects, and opening a direct one."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from .base import Body, Shape, tidy
from .messages import Message
from .people import ProjectRef, User


class Conversation(Shape):
    """``serialize.conversation_object``: an entry of the list, and every answer that is one
    conversation (``/direct/create``, ``/conversations/conversation/{id}``)."""

    id: str = Field(alias="_id")
    type: Literal["direct", "project"]
    name: str | None
    participants: list[User]
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

    @model_validator(mode="after")
    def _one(self) -> DirectBody:
        if self.userId is None and self.participantId is None:
            raise ValueError("userId is required")
        return self

    @property
    def other(self) -> str:
        return str(self.userId if self.userId is not None else self.participantId)
