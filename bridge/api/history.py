"""History pages, read from the homeserver's /messages as the user's puppet.

Two ways to page, both served from Synapse:

* ``page``/``limit`` (the seed's): page 1 is the newest ``limit`` messages, page 2 the ones
  before, each ordered oldest to newest;
* ``before``/``after`` a message id (ours, gap-free while new messages arrive): the reply's
  ``nextCursor`` continues in the same direction.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..context import MATRIX
from ..db.cleared import ClearPoint
from ..db.conversation import Conversation
from ..db.crm_user import CrmUser
from ..errors import InvalidParam, NotFound
from ..ids import event_id_for_message, message_id_for_event
from ..matrix.homeserver import MatrixError
from ..matrix.indexer import INDEXED_TYPES
from . import clear

if TYPE_CHECKING:
    from .chat import ChatService

MAX_LIMIT = 100
# Events asked of the homeserver at once: a full page, its look-ahead and the cursor event.
BATCH = MAX_LIMIT + 2
MAX_PAGE_DEPTH = 5000
_FILTER = json.dumps(
    {"types": sorted(INDEXED_TYPES - {"m.room.encrypted"}), "lazy_load_members": True}
)


def _int_param(query: Any, name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError) as e:
        raise InvalidParam(f"{name} must be an integer") from e
    if not low <= value <= high:
        raise InvalidParam(f"{name} must be between {low} and {high}")
    return value


def _is_message(event: dict[str, Any]) -> bool:
    return (
        event.get("type") in INDEXED_TYPES
        and "state_key" not in event
        and bool(event.get("content"))
    )


async def _collect(
    service: ChatService,
    conversation: Conversation,
    user: CrmUser,
    direction: str,
    token: str | None,
    skip: int,
    want: int,
    drop_through: str | None = None,
    point: ClearPoint | None = None,
) -> list[dict[str, Any]]:
    """Up to skip+want messages walking in direction from token; returns them after skip.

    ``drop_through``: the event the token sits on; it (and anything before it in the first
    chunk) is left out. ``point``: the user's clear point; what it hides is left out, and
    walking back stops there.
    """
    matrix = service.app[MATRIX]
    found: list[dict[str, Any]] = []
    while len(found) < skip + want:
        batch = min(BATCH, skip + want - len(found) + 1)
        resp = await matrix.messages(
            conversation.room_id,
            direction=direction,
            limit=batch,
            from_token=token,
            as_user=user.mxid,
            filter_json=_FILTER,
        )
        chunk = resp.get("chunk") or []
        token = resp.get("end")
        done = not chunk or not token
        if drop_through is not None:
            ids = [event.get("event_id") for event in chunk]
            if drop_through in ids:
                chunk = chunk[ids.index(drop_through) + 1 :]
            drop_through = None
        for event in chunk:
            event.setdefault("room_id", conversation.room_id)
            if not _is_message(event):
                continue
            if await clear.hidden(service, point, event):
                if direction == "b":
                    done = True  # everything further back was cleared too
                    break
                continue
            found.append(event)
        if done:
            break
    return found[skip : skip + want]


async def _token_at(
    service: ChatService, conversation: Conversation, user: CrmUser, message_id: str
) -> tuple[str, str]:
    """The event id of a cursor and a token right after it in the room's order.

    Synapse orders a room by (depth, stream ordering), and concurrent sends give many events
    one depth. /context's ``end`` (with limit 0) is exactly (depth, stream) of the event:
    forwards from it is everything after the event, backwards from it is the event and
    everything before. Its ``start`` is (depth - 1, stream), which backwards skips the
    event's elder siblings at its own depth, so it must not be used.
    """
    event_id = event_id_for_message(message_id)
    if event_id is None:
        raise InvalidParam("The cursor is not a message id")
    try:
        context = await service.app[MATRIX].context(
            conversation.room_id, event_id, limit=0, as_user=user.mxid
        )
    except MatrixError as e:
        if e.status in (400, 403, 404):
            raise NotFound("Message not found") from e
        raise
    event = context.get("event") or {}
    if event.get("room_id", conversation.room_id) != conversation.room_id:
        raise NotFound("Message not found")
    return event_id, context["end"]


async def page(
    service: ChatService, user: CrmUser, conversation: Conversation, query: Any
) -> dict[str, Any]:
    limit = _int_param(query, "limit", 50, 1, MAX_LIMIT)
    before, after = query.get("before"), query.get("after")
    if before and after:
        raise InvalidParam("Use either before or after, not both")
    point = await clear.clear_point(service, user, conversation)
    if before or after:
        event_id, token = await _token_at(service, conversation, user, before or after)
        direction = "b" if before else "f"
        # Backwards the walk starts on the cursor event itself; it is dropped there.
        drop = event_id if before else None
        events = await _collect(
            service, conversation, user, direction, token, 0, limit + 1, drop, point
        )
    else:
        number = _int_param(query, "page", 1, 1, MAX_PAGE_DEPTH)
        if (number - 1) * limit > MAX_PAGE_DEPTH:
            raise InvalidParam(f"Use cursors to page further back than {MAX_PAGE_DEPTH} messages")
        events = await _collect(
            service, conversation, user, "b", None, (number - 1) * limit, limit + 1, None, point
        )
        direction = "b"
    has_more = len(events) > limit
    events = events[:limit]
    if direction == "b":
        events.reverse()
    for event in events:
        if event.get("content"):
            service.events.put(event)
    messages = await service.messages_from_events(conversation, events)
    if direction == "b":
        next_cursor = message_id_for_event(events[0]["event_id"]) if has_more and events else None
    else:
        next_cursor = message_id_for_event(events[-1]["event_id"]) if events else query.get("after")
    return {"messages": messages, "hasMore": has_more, "nextCursor": next_cursor}
