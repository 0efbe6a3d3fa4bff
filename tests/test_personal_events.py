"""Every socket event that can carry an avatar or attachment URL is signed per socket."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel

from bridge.api.contract import SOCKET_EVENTS
from bridge.api.models.messages import Message
from bridge.api.models.people import User
from bridge.realtime.access import PERSONAL_EVENTS


def _carries(annotation: Any, kinds: tuple[type, ...], seen: set[type]) -> bool:
    """Whether a field of this type can hold one of kinds (through lists, optionals, models)."""
    if isinstance(annotation, type):
        if issubclass(annotation, kinds):
            return True
        if issubclass(annotation, BaseModel) and annotation not in seen:
            seen.add(annotation)
            return any(
                _carries(f.annotation, kinds, seen) for f in annotation.model_fields.values()
            )
        return False
    return any(_carries(arg, kinds, seen) for arg in typing.get_args(annotation))


def test_events_carrying_users_or_messages_are_personal() -> None:
    carrying = {
        e.name
        for e in SOCKET_EVENTS
        if e.direction == "server to client" and _carries(e.payload, (User, Message), set())
    }
    assert {"message_pinned", "message_unpinned", "new_message"} <= carrying
    assert carrying <= PERSONAL_EVENTS, carrying - PERSONAL_EVENTS
    # Typing and presence carry the user object (avatar) and are not in the contract list.
    assert {"user_typing", "user_online"} <= PERSONAL_EVENTS
