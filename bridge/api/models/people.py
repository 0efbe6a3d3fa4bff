"""People and projects as the facade shows them (``chat/serialize.py``, ``routes_directory``)."""

from __future__ import annotations

from pydantic import Field, field_validator

from .base import Query, Shape, absent, without_nul

MAX_QUERY = 256

USER_ID = "CRM user id, or the mxid of a Matrix-only user"


class User(Shape):
    """Every person the facade or the socket names: senders, participants, members, typers,
    who pinned (``serialize.user_object``; the seed's four fields and the CRM messenger's)."""

    id: str = Field(alias="_id", description=USER_ID)
    name: str
    firstName: str
    lastName: str = Field(description='"" when unknown (a Matrix-only user)')
    email: str | None
    avatar: str | None
    profileImage: str | None = Field(description="The CRM's picture URL (else the avatar)")
    position: str | None = Field(description="Job title, from the CRM directory")


class Participant(User):
    """A conversation's participant: a user, online or not (``serialize.with_presence``)."""

    isOnline: bool = Field(description="A socket open, or online on Matrix")
    lastSeen: str | None


class Employee(Participant):
    """``/api/chat/employees``: someone the user may start a chat with."""


class EmployeesQuery(Query):
    q: str | None = Field(
        default=None, max_length=MAX_QUERY, description="Words the name, email or position has"
    )
    limit: int = Field(default=500, ge=1, le=2000)

    @field_validator("q")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        return None if value is None else without_nul(value)


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
