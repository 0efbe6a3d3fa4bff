"""History pages, read as the user's puppet (docs/api.md, "Order").

* ``page``/``limit`` (the seed's) and ``before=<messageId>``: the homeserver's topological
  order (/messages): page 1 is the newest ``limit`` messages, page 2 the ones before, each
  ordered oldest to newest; ``before`` continues back from a message;
* ``after=<messageId>``: the conversation's live order, the bridge's index (live_walk.py), so
  a client resuming from a cursor misses nothing that arrived later at a lower depth. A
  cursor the index never saw (older than the bridge's index of the room) is walked
  topologically until the walk reaches indexed messages.

Each walk returns every message of its order exactly once, whatever arrives meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any

from ..chat import prefetch
from ..chat.cursor import seq_of_cursor
from ..chat.indexer import index_event
from ..chat.prefetch import PagePrefetch
from ..context import EVENT_INDEX, MATRIX
from ..db.cleared import ClearPoint
from ..db.conversation import Conversation
from ..db.crm_user import CrmUser
from ..db.relation import REDACTION, REPLACE, THREAD
from ..db.room_event import SENT, SHOWN_TYPES, RoomEvent
from ..errors import InvalidParam, NotFound
from ..ids import event_id_for_message, message_id_for_event, room_id_for_conversation
from ..matrix.homeserver import MatrixError
from ..matrix.relations import MESSAGE_TYPES, RELATIONS, is_timeline_message
from ..tasks import drop
from . import clear, live_walk

if TYPE_CHECKING:
    from ..chat.service import ChatService

MAX_LIMIT = 100
# Events asked of the homeserver at once: a full page, its look-ahead and the cursor event.
BATCH = MAX_LIMIT + 2
MAX_PAGE_DEPTH = 5000
# Empty chunks in a row that a walk goes on through (Synapse answers an empty chunk with an
# ``end`` token when everything in its batch was hidden from the user).
MAX_EMPTY_CHUNKS = 20
# A cursor the index does not hold yet, no older than its newest message by this much, is
# on its way (a message just sent).
IN_FLIGHT_MS = 60_000
# The newest page takes indexed messages the homeserver's answer lacks (a reader behind the
# event persister, Synapse with workers) when they are newer than all it returned and no
# older than this: a reader further behind than that is a homeserver fault, not lag.
LAG_WINDOW_MS = 30_000
# Edits and thread replies are never messages of a page (their originals come with the
# latest edit bundled). A homeserver with MSC3874 (Synapse: experimental_features:
# msc3874_enabled) leaves them out, so a page of edited messages costs it no more than one
# without; one without the feature ignores the key, and _collect drops them as it reads.
_FILTER = json.dumps(
    {
        "types": sorted(MESSAGE_TYPES - {"m.room.encrypted"}),
        "lazy_load_members": True,
        "org.matrix.msc3874.not_rel_types": [REPLACE, THREAD],
    }
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
    first: Awaitable[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Up to skip+want messages walking in direction from token; returns them after skip.

    ``drop_through``: the event the token sits on; it (and anything before it in the first
    chunk) is left out. ``point``: the user's clear point; what it hides is left out, and
    walking back stops there. ``first``: the first batch, already asked for
    (:func:`_batch` with the same arguments).
    """
    found: list[dict[str, Any]] = []
    seen = kept = 0
    empty = 0
    while len(found) < skip + want and empty <= MAX_EMPTY_CHUNKS:
        if first is not None:
            resp, first = await first, None
        else:
            resp = await _batch(
                service, conversation.room_id, user, direction, token, skip + want - len(found)
            )
        chunk = resp.get("chunk") or []
        previous, token = token, resp.get("end")
        # No end token is the end of the timeline; an empty chunk with one is not.
        done = not token or (not chunk and token == previous)
        empty = 0 if chunk else empty + 1
        if drop_through is not None:
            ids = [event.get("event_id") for event in chunk]
            if drop_through in ids:
                chunk = chunk[ids.index(drop_through) + 1 :]
            drop_through = None
        for event in chunk:
            event.setdefault("room_id", conversation.room_id)
            if not is_timeline_message(event):
                continue
            kept += 1
            if await clear.hidden(service, point, event):
                if direction == "b":
                    done = True  # everything further back was cleared too
                    break
                continue
            found.append(event)
        seen += len(chunk)
        if done:
            break
    if seen >= 10:
        stretches = service.history_stretch
        if len(stretches) > 20000:
            stretches.clear()
        stretches[conversation.room_id] = min(3.0, seen / max(kept, 1))
    return found[skip : skip + want]


def _batch(
    service: ChatService, room_id: str, user: CrmUser, direction: str, token: str | None, want: int
) -> Awaitable[dict[str, Any]]:
    """One /messages call for ``want`` more messages."""
    # Edits and thread replies come back among the messages and are dropped by _collect: ask
    # for as many more as this room had last time, so a page stays one call to the homeserver.
    stretch = service.history_stretch.get(room_id, 1.0)
    return service.app[MATRIX].messages(
        room_id,
        direction=direction,
        limit=min(BATCH, int(want * stretch) + 1),
        from_token=token,
        as_user=user.mxid,
        filter_json=_FILTER,
    )


async def _token_at(
    service: ChatService, conversation: Conversation, user: CrmUser, message_id: str
) -> tuple[str, str]:
    event_id, token, _ = await _context(service, conversation, user, message_id)
    return event_id, token


async def _context(
    service: ChatService, conversation: Conversation, user: CrmUser, message_id: str
) -> tuple[str, str, dict[str, Any]]:
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
    return event_id, context["end"], event


async def _indexed(
    service: ChatService, conversation: Conversation, event: dict[str, Any]
) -> RoomEvent | None:
    """An index row for a cursor the index does not hold yet: a message on its way from the
    homeserver (as new as the newest indexed message, say just sent) takes its place in the
    live order now, as mark-read does (everything indexed before it came before it in the
    homeserver's stream order; what is still on its way comes after). An older one (from
    before the bridge indexed the room) gets none."""
    index = service.app[EVENT_INDEX]
    latest = await index.latest(conversation.room_id)
    ts = event.get("origin_server_ts")
    if latest is None or not isinstance(ts, int) or ts < latest.origin_ts - IN_FLIGHT_MS:
        return None
    if not is_timeline_message(event) or not isinstance(event.get("sender"), str):
        return None
    return await index_event(
        service.app, {**event, "room_id": conversation.room_id}, notify=False, arrival=SENT
    )


async def _after(
    service: ChatService, user: CrmUser, conversation: Conversation, cursor: str, limit: int
) -> tuple[list[dict[str, Any]], bool, str]:
    """The page after a cursor in the live order: events, hasMore, nextCursor."""
    index = service.app[EVENT_INDEX]
    if (seq := seq_of_cursor(cursor)) is not None:
        return await _after_seq(service, user, conversation, seq, cursor, limit)
    # A message id: the cursor before the log's seq tokens (deprecated, docs/api.md).
    event_id = event_id_for_message(cursor)
    if event_id is None:
        raise InvalidParam("The cursor is neither a cursor nor a message id")
    row = await index.get(event_id)
    if row is not None and row.room_id != conversation.room_id:
        raise NotFound("Message not found")
    if row is not None:

        async def token() -> str | None:
            try:
                return (await _token_at(service, conversation, user, cursor))[1]
            except NotFound:
                return None  # a cursor hidden from the user: no window, /event per message

        page = await live_walk.after(
            service, conversation, user, row.seq, limit,
            token=token, filter_json=_FILTER, is_message=is_timeline_message,
        )  # fmt: skip
        return page.messages, page.more, page.next_cursor(cursor)
    _, at, event = await _context(service, conversation, user, cursor)
    if (row := await _indexed(service, conversation, event)) is not None:
        page = await live_walk.after(
            service, conversation, user, row.seq, limit,
            token=lambda: _constant(at), filter_json=_FILTER, is_message=is_timeline_message,
        )  # fmt: skip
        return page.messages, page.more, page.next_cursor(cursor)
    # Older than the index: topologically, up to the first indexed messages.
    events = await _collect(service, conversation, user, "f", at, 0, limit + 1)
    known = await index.get_many([e["event_id"] for e in events])
    cut = next((i for i, e in enumerate(events) if e["event_id"] in known), len(events))
    if cut >= limit or cut == len(events):
        events = events[: limit + 1]
        more = len(events) > limit
        events = events[:limit]
        return events, more, message_id_for_event(events[-1]["event_id"]) if events else cursor
    # From there on, the index's order, from the oldest indexed message the walk met.
    start = min(known[e["event_id"]].seq for e in events[cut:] if e["event_id"] in known)
    page = await live_walk.after(
        service, conversation, user, start - 1, limit - cut,
        token=lambda: _constant(at), filter_json=_FILTER, is_message=is_timeline_message,
    )  # fmt: skip
    prefix = events[:cut]
    resume = message_id_for_event(prefix[-1]["event_id"]) if prefix else cursor
    return prefix + page.messages, page.more, page.next_cursor(resume)


async def _after_seq(
    service: ChatService,
    user: CrmUser,
    conversation: Conversation,
    seq: int,
    cursor: str,
    limit: int,
) -> tuple[list[dict[str, Any]], bool, str]:
    """The page after a position of the conversation's log (a seq token)."""

    async def token() -> str | None:
        row = await service.app[EVENT_INDEX].at_or_before(conversation.room_id, seq)
        if row is None:
            return None  # before the first message: the walk fetches each body
        try:
            message_id = message_id_for_event(row.event_id)
            return (await _token_at(service, conversation, user, message_id))[1]
        except NotFound:
            return None

    page = await live_walk.after(
        service, conversation, user, seq, limit,
        token=token, filter_json=_FILTER, is_message=is_timeline_message,
    )  # fmt: skip
    return page.messages, page.more, page.next_cursor(cursor)


async def _constant(value: str) -> str:
    return value


async def page_of(
    service: ChatService, user: CrmUser, conversation_id: str, query: Any
) -> dict[str, Any]:
    """A history page of a conversation the user takes part in (404 otherwise).

    A page without a cursor asks the homeserver for its first batch while the membership and
    the clear point are looked up: the answer is dropped unless the user takes part (a read
    has nothing to undo, and the homeserver checks the puppet's membership as well).
    """
    limit = _int_param(query, "limit", 50, 1, MAX_LIMIT)
    before, after = query.get("before"), query.get("after")
    if before and after:
        raise InvalidParam("Use either before or after, not both")
    room_id = room_id_for_conversation(conversation_id) if conversation_id else None
    if before or after or room_id is None:
        conversation = await service.conversation_for(user, conversation_id)
        point = await clear.clear_point(service, user, conversation.room_id)
        return await _page(service, user, conversation, query, limit, point)
    skip = (_page_number(query, limit) - 1) * limit
    head = asyncio.ensure_future(_batch(service, room_id, user, "b", None, skip + limit + 1))
    ahead: asyncio.Future[PagePrefetch] | None = None
    try:
        await asyncio.sleep(0)  # the homeserver's request is sent before the lookups below
        conversation = await service.conversation_for(user, conversation_id)
        # What the index holds about the room's newest messages is read meanwhile too.
        if (rows := prefetch.rows_for(skip, limit)) is not None:
            ahead = asyncio.ensure_future(prefetch.newest(service.app, room_id, rows))
        point = await clear.clear_point(service, user, room_id)
        if conversation.room_id != room_id:  # never so today: ids are room ids
            drop(head)
            return await _page(service, user, conversation, query, limit, point)
        return await _page(
            service, user, conversation, query, limit, point, first=head, ahead=ahead
        )
    finally:  # whatever went wrong, neither read outlives the request or logs its outcome
        for task in (head, ahead):
            if task is not None:
                drop(task)


def _page_number(query: Any, limit: int) -> int:
    number = _int_param(query, "page", 1, 1, MAX_PAGE_DEPTH)
    if (number - 1) * limit > MAX_PAGE_DEPTH:
        raise InvalidParam(f"Use cursors to page further back than {MAX_PAGE_DEPTH} messages")
    return number


async def _page(
    service: ChatService,
    user: CrmUser,
    conversation: Conversation,
    query: Any,
    limit: int,
    point: ClearPoint | None,
    first: Awaitable[dict[str, Any]] | None = None,
    ahead: Awaitable[PagePrefetch] | None = None,
) -> dict[str, Any]:
    before, after = query.get("before"), query.get("after")
    if after:
        events, has_more, next_cursor = await _after(service, user, conversation, after, limit)
        events = [e for e in events if not await clear.hidden(service, point, e)]
        for event in events:
            service.events.put(event)
        messages = await service.messages_from_events(conversation, events, viewer=user)
        return {"messages": messages, "hasMore": has_more, "nextCursor": next_cursor}
    if before:
        event_id, token = await _token_at(service, conversation, user, before)
        # Backwards the walk starts on the cursor event itself; it is dropped there.
        events = await _collect(
            service, conversation, user, "b", token, 0, limit + 1, event_id, point
        )
    else:
        # From the newest: the messages still in flight go on top, then the page is cut,
        # so page N counts them as page 1 did and a walk by page neither skips nor repeats.
        skip = (_page_number(query, limit) - 1) * limit
        events = await _collect(
            service, conversation, user, "b", None, 0, skip + limit + 1, None, point, first
        )
        events = await _in_flight(service, conversation, user, events, point, ahead) + events
        events = events[skip:]
    events = await _not_deleted(service, events)
    has_more = len(events) > limit
    events = events[:limit]
    events.reverse()
    for event in events:
        service.events.put(event)
    messages = await service.messages_from_events(conversation, events, viewer=user, prefetch=ahead)
    back = message_id_for_event(events[0]["event_id"]) if has_more and events else None
    return {"messages": messages, "hasMore": has_more, "nextCursor": back}


async def _not_deleted(service: ChatService, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The page without messages the bridge has seen deleted (its own delete route, or a
    transaction) that the homeserver still serves whole: with Synapse's workers a reader
    behind the event persister serves a message as it was until the redaction replicates
    (docs/architecture.md, "Synapse with workers")."""
    live = [e["event_id"] for e in events if e.get("content")]
    if not live:
        return events
    gone = {
        r.target
        for r in await service.app[RELATIONS].store.about(live, (REDACTION,))
        if r.key == "message"
    }
    return [e for e in events if e.get("event_id") not in gone] if gone else events


async def _in_flight(
    service: ChatService,
    conversation: Conversation,
    user: CrmUser,
    events: list[dict[str, Any]],
    point: ClearPoint | None,
    ahead: Awaitable[PagePrefetch] | None = None,
) -> list[dict[str, Any]]:
    """Messages for the top of the newest page (newest first) that the homeserver's answer
    lacks although the bridge has indexed them: its own sends, or transactions.

    With Synapse's workers a send returns once the event persister has stored the event,
    and a client reader answers /messages from its own stream position, which replication
    moves on a moment later; meanwhile the page a client asks for right after sending would
    lack the message (docs/architecture.md, "Synapse with workers"). Only messages newer
    than everything the homeserver returned count: a message stored late at a lower depth
    is older than the page's newest, and the homeserver places it itself. The bodies come
    from the body cache (the send path's copy) or by id, which every worker reads from the
    database. On a homeserver that answers at once, nothing is missing and nothing is read.
    """
    if ahead is not None:  # the index rows the page's prefetch read meanwhile
        rows = list((await ahead).rows)
    else:
        rows = await service.app[EVENT_INDEX].newest(conversation.room_id, MAX_LIMIT + 1)
    shown = {e.get("event_id") for e in events}
    newest = max((e.get("origin_server_ts") or 0 for e in events), default=0)
    floor = max(newest, int(time.time() * 1000) - LAG_WINDOW_MS)
    missing = [
        r for r in rows if r.event_id not in shown and r.origin_ts > floor
        and r.event_type in SHOWN_TYPES
    ]  # fmt: skip
    if not missing:
        return []
    fetched = await asyncio.gather(
        *(service.fetch_event(conversation.room_id, r.event_id, user.mxid) for r in missing)
    )
    out = []
    for event in fetched:  # newest first, as the index gave them
        if event and is_timeline_message(event) and not await clear.hidden(service, point, event):
            out.append(event)
    return out


async def whole_history(
    service: ChatService, conversation: Conversation, reader: str
) -> AsyncIterator[list[dict[str, Any]]]:
    """Every message of a room, oldest first, as the API's message objects, in batches.

    Walks /messages forwards from the room's start (no ``from`` token) as ``reader``, a
    joined member; for operator tools such as ``python -m bridge export``, never a user.
    """
    matrix = service.app[MATRIX]
    token: str | None = None
    seen: set[str] = set()
    while True:
        resp = await matrix.messages(
            conversation.room_id, direction="f", limit=MAX_LIMIT, from_token=token,
            as_user=reader, filter_json=_FILTER,
        )  # fmt: skip
        chunk = resp.get("chunk") or []
        events = []
        for event in chunk:
            event.setdefault("room_id", conversation.room_id)
            if is_timeline_message(event) and event["event_id"] not in seen:
                seen.add(event["event_id"])
                events.append(event)
        if events:
            yield await service.messages_from_events(conversation, events)
        token = resp.get("end")
        if not chunk or not token:
            return
