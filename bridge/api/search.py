"""``/api/chat/search``: the homeserver's full-text search, as the user's puppet.

The bridge keeps no message bodies, so Synapse searches (its ``event_search`` table, on
SQLite or PostgreSQL). The rooms asked for are only the user's conversations (or the one
named), and Synapse checks again that the puppet may see each event. ``next_batch`` is the
cursor, passed back unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from typing import TYPE_CHECKING, Any

from ..context import CONVERSATIONS, MATRIX
from ..db.conversation import Conversation
from ..db.crm_user import CrmUser
from ..errors import InvalidParam
from ..matrix.homeserver import MatrixError
from ..matrix.relations import is_timeline_message
from . import clear
from .models import SearchQuery, parse

if TYPE_CHECKING:
    from ..chat.service import ChatService


# Synapse drops these (its _is_stop_word), and turns a bare "or" into an operator.
_STOP_WORDS = frozenset({"the", "a", "you", "me", "and", "but", "or"})
_MAX_WORDS = 16
_MAX_INT = 2**53


def search_term(q: str) -> str:
    """Plain lowercase words, all of which must match.

    Synapse hands the term to SQLite's FTS ``MATCH`` nearly as typed, where quotes, a lone
    ``-word``, ``OR``/``NOT``/``NEAR`` can make a malformed expression (a 500). Words only
    behave the same on SQLite and PostgreSQL.
    """
    words = [w for w in re.findall(r"\w+", q.lower()) if w not in _STOP_WORDS]
    return " ".join(words[:_MAX_WORDS])


def _check_cursor(cursor: str) -> None:
    """A ``next_batch`` as Synapse makes them: base64 of "group\\nkey\\nts,stream"."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        group, _, token = base64.b64decode(padded, validate=True).decode("ascii").split("\n")
        ts, stream = (int(part) for part in token.split(","))
    except (ValueError, UnicodeDecodeError, binascii.Error) as e:
        raise InvalidParam("cursor is not a nextCursor of a search") from e
    if group not in ("all", "room_id") or not (0 <= ts < _MAX_INT and 0 <= stream < _MAX_INT):
        raise InvalidParam("cursor is not a nextCursor of a search")


async def _rooms(
    service: ChatService, user: CrmUser, conversation_id: str | None
) -> list[Conversation]:
    if conversation_id is not None:
        return [await service.conversation_for(user, conversation_id)]
    return await service.app[CONVERSATIONS].of_member(user.mxid)


async def search(service: ChatService, user: CrmUser, query: Any) -> dict[str, Any]:
    params = parse(SearchQuery, {k: query.get(k) for k in query if query.get(k) is not None})
    if params.cursor is not None:
        _check_cursor(params.cursor)
    conversations = {c.room_id: c for c in await _rooms(service, user, params.conversationId)}
    term = search_term(params.q)
    if not conversations or not term:
        return {"messages": [], "hasMore": False, "nextCursor": None, "count": 0}
    body = {
        "search_categories": {
            "room_events": {
                "search_term": term,
                "keys": ["content.body"],
                "order_by": "recent",
                "filter": {"rooms": sorted(conversations), "limit": params.limit},
            }
        }
    }
    try:
        resp = await service.app[MATRIX].search(body, params.cursor, as_user=user.mxid)
    except MatrixError as e:
        if e.status == 400 and params.cursor:
            raise InvalidParam("cursor is not a nextCursor of this search") from e
        raise
    found = (resp.get("search_categories") or {}).get("room_events") or {}
    points = await service.cleared.of_user(user.mxid)
    by_room: dict[str, list[dict[str, Any]]] = {}
    order: list[str] = []
    for result in found.get("results") or []:
        event = result.get("result") if isinstance(result, dict) else None
        if not isinstance(event, dict) or event.get("room_id") not in conversations:
            continue
        # An edit is not a hit of its own (its original is found by its own words).
        if not is_timeline_message(event, in_threads=True) or await clear.hidden(
            service, points.get(event["room_id"]), event
        ):
            continue
        by_room.setdefault(event["room_id"], []).append(event)
        order.append(event["event_id"])
    # History's serializer, room by room, all rooms at once.
    pages = await asyncio.gather(
        *(service.messages_from_events(conversations[r], events) for r, events in by_room.items())
    )
    objects = {message["eventId"]: message for page in pages for message in page}
    cursor = found.get("next_batch")
    count = found.get("count")
    return {
        "messages": [objects[i] for i in order if i in objects],
        "hasMore": bool(cursor),
        "nextCursor": cursor or None,
        "count": count if isinstance(count, int) else len(objects),
    }
