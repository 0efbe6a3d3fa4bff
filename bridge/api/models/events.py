"""Socket.IO payloads of their own (the facade's shared ones are in the other modules), and
the admin API's pushed events (``realtime/crm_rooms.py``)."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from .base import Body, Query, Shape, tidy
from .people import User


class MessagePinned(Shape):
    conversationId: str
    messageId: str
    pinnedBy: User
    pinnedAt: str


class MessageUnpinned(Shape):
    conversationId: str
    messageId: str
    unpinnedBy: User


class ChatCleared(Shape):
    conversationId: str
    clearedBy: str = Field(description="The CRM user id who cleared it")


class RoomName(Query):
    """``join_room``/``leave_room``: a bare string, or ``{room}``."""

    room: str = Field(min_length=1, max_length=200, pattern="^(user|company)_[^\\s]+$")


class AdminEvent(Body):
    """``POST /api/admin/v1/events``: the CRM backend's own event, to the sockets of one
    user, one company, or a room the CRM named (``user_<id>`` / ``company_<id>``)."""

    model_config = ConfigDict(
        strict=True, extra="forbid", populate_by_name=True, json_schema_extra=tidy
    )

    event: str = Field(min_length=1, max_length=100, pattern="^[A-Za-z][A-Za-z0-9_:.-]*$")
    data: Any = None
    room: str | None = Field(default=None, min_length=1, max_length=200)
    userId: str | int | None = None
    companyId: str | int | None = None


class AdminEventResult(Shape):
    success: bool
    room: str
