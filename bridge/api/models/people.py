"""People and projects as the facade shows them (``chat/serialize.py``, ``routes_directory``)."""

from __future__ import annotations

from pydantic import Field

from .base import Shape, absent

USER_ID = "CRM user id, or the mxid of a Matrix-only user"


class User(Shape):
    """A sender, participant or member (``serialize.user_object``)."""

    id: str = Field(alias="_id", description=USER_ID)
    name: str
    email: str | None
    avatar: str | None


class DirectoryUser(User):
    """``/api/users`` and ``/api/auth/me``: a user with role and presence."""

    role: str
    isOnline: bool
    lastSeen: str | None
    matrixId: str | None = None


class OnlineUser(Shape):
    id: str = Field(alias="_id", description=USER_ID)
    name: str
    avatar: str | None
    lastSeen: str | None


class ProjectRef(Shape):
    id: str = Field(alias="_id")
    name: str
    emoji: str | None
    color: str | None


class Project(ProjectRef):
    description: str | None = None
    members: list[User]
    createdBy: str | None = None
    archived: bool = absent()
    conversationId: str | None
    createdAt: str | None = None
    updatedAt: str | None = None
