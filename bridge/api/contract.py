"""Each route's contract, declared on its handler: the one source of the OpenAPI document.

How to declare a route (the decorator goes between the route table's and ``authed``)::

    @routes.post("/api/chat/react")
    @declare(
        "React to a message (m.annotation)",       # the summary
        tags=MESSAGES,
        body=ReactBody,                              # a models.Body, validated by the handler
        ok={200: (Message, "The message as it is now")},
        errors=(400, 404, 413, 503),                 # 401, 403 and 429 are implied
    )
    @authed(None)
    async def react(request, user): ...

* ``body`` (JSON), ``form`` (multipart), ``query`` and ``path`` take pydantic models from
  ``bridge/api/models/``; ``path``'s fields must be the route's ``{placeholders}``.
* ``ok`` maps each success status to ``(shape, description)``: a ``models.Shape``,
  ``list[Shape]``, or ``bytes`` for a file.
* ``errors`` lists the other statuses; each answers ``models.Error``.
* A route that is no part of the API (the document itself) says ``@undocumented(why)``.

Socket.IO events whose payloads are these models are listed in ``SOCKET_EVENTS`` (the
document shows them under ``x-socket-events``); the socket handlers parse incoming ones
through the same service functions as REST.

``openapi.spec`` walks the app's router and builds the document from these; a test checks
that every ``/api/`` route carries a declaration and that every declared handler is routed.

**Validation.** Requests are validated with the same models (``models.parse``), in the
service function where REST and socket meet, so both doors parse one model. Responses are
**not** validated at run time: the serializers build plain dicts and orjson encodes them
(history pages and conversation lists are the hot path, and a pydantic round trip would cost
more than the encoding). The response models describe those dicts for the document, and the
tests check real answers against them (``tests/test_api_contracts.py``, schemathesis).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from .models import (
    ChatCleared,
    Error,
    MarkAsRead,
    Message,
    MessageDeleted,
    MessagePinned,
    MessageUnpinned,
    Resync,
    RoomName,
    SendBody,
)

F = TypeVar("F", bound=Callable[..., Any])

ATTR = "api_contract"

CONVERSATIONS = ("conversations",)
MESSAGES = ("messages",)
FILES = ("files",)
PEOPLE = ("people",)


@dataclass(frozen=True)
class Reply:
    shape: Any  # a Shape, list[Shape], or bytes (a file)
    description: str


@dataclass(frozen=True)
class Contract:
    summary: str
    tags: tuple[str, ...]
    ok: Mapping[int, Reply]
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    form: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path: type[BaseModel] | None = None
    description: str | None = None
    documented: bool = True
    headers: Mapping[str, str] = field(default_factory=dict)


def declare(
    summary: str,
    *,
    tags: tuple[str, ...],
    ok: Mapping[int, tuple[Any, str]],
    errors: tuple[int, ...] = (),
    body: type[BaseModel] | None = None,
    form: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    path: type[BaseModel] | None = None,
    description: str | None = None,
) -> Callable[[F], F]:
    contract = Contract(
        summary=summary,
        tags=tags,
        ok={status: Reply(*reply) for status, reply in ok.items()},
        errors=errors,
        body=body,
        form=form,
        query=query,
        path=path,
        description=description,
    )

    def mark(handler: F) -> F:
        setattr(handler, ATTR, contract)
        return handler

    return mark


def undocumented(why: str) -> Callable[[F], F]:
    """A route under /api/ that is no part of the API (the document, its viewer)."""

    def mark(handler: F) -> F:
        setattr(handler, ATTR, Contract(summary=why, tags=(), ok={}, documented=False))
        return handler

    return mark


def contract_of(handler: Any) -> Contract | None:
    found = getattr(handler, ATTR, None)
    return found if isinstance(found, Contract) else None


@dataclass(frozen=True)
class SocketEvent:
    name: str
    direction: Literal["client to server", "server to client"]
    payload: type[BaseModel]
    description: str


_IN: Literal["client to server"] = "client to server"
_OUT: Literal["server to client"] = "server to client"

# The socket events that carry the facade's models (docs/realtime.md lists every event).
SOCKET_EVENTS: tuple[SocketEvent, ...] = (
    SocketEvent("send_message", _IN, SendBody, "As POST /api/chat/send; acked with a Message"),
    SocketEvent("mark_as_read", _IN, MarkAsRead, "As POST /api/chat/mark-read"),
    SocketEvent("new_message", _OUT, Message, "A message in a joined conversation"),
    SocketEvent("message_sent", _OUT, Message, "To the sender: the message it sent"),
    SocketEvent("message_update", _OUT, Message, "A message after an edit, reaction or pin"),
    SocketEvent("message_deleted", _OUT, MessageDeleted, "A message was redacted"),
    SocketEvent("message_pinned", _OUT, MessagePinned, "A message was pinned (CRM or Element)"),
    SocketEvent("message_unpinned", _OUT, MessageUnpinned, "A message was unpinned"),
    SocketEvent("chat_cleared", _OUT, ChatCleared, "To the user's own sockets: clear-chat"),
    SocketEvent("join_room", _IN, RoomName, "The CRM's own rooms: user_<id>, company_<id>"),
    SocketEvent("resync", _OUT, Resync, "An event was dropped: refetch the conversation"),
    SocketEvent("error", _OUT, Error, "A failed operation (also its ack)"),
)
