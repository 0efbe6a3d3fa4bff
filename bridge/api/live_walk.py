"""``after=<messageId>``: the conversation's live order, read from the bridge's index.

Synapse's /messages is topological (depth, then stream order). Concurrent sends fork the
room's DAG, so a message that arrives after another can sit at a lower depth, and a forward
walk from a cursor never returns it. The index's ``seq`` is the order in which the bridge
learned of each message (the homeserver's stream order, as transactions bring them; see
bridge/db/room_event.py): the order sockets deliver in, that ``lastMessage`` and
``unreadCount`` use. ``after`` pages it, so a client resuming from any cursor gets every
message after it exactly once, whatever the interleaving.

Which message the user may see is still the homeserver's answer, not ours: bodies come from
/messages and /event as the user's puppet (never from the body cache, which holds events
whatever their visibility). One /messages window usually holds the whole page; the few
messages outside it (a lagging fork) are fetched with /event, eight at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..chat.cursor import cursor_of
from ..context import EVENT_INDEX, MATRIX
from ..db.conversation import Conversation
from ..db.crm_user import CrmUser
from ..db.room_event import RoomEvent
from ..matrix.homeserver import MatrixError

if TYPE_CHECKING:
    from ..chat.service import ChatService

# Extra events asked of the window, for messages the homeserver holds and the index does not
# yet (in flight) or will never show (filtered out).
SLACK = 20
WINDOW_MAX = 100
# Rounds of index reads when messages of a page turn out hidden or redacted.
MAX_ROUNDS = 5


@dataclass
class Page:
    messages: list[dict[str, Any]]
    more: bool
    full: bool  # the look-ahead message exists: the page holds ``limit`` messages
    last: RoomEvent | None  # the last index row considered
    seqs: list[int] = field(default_factory=list)  # each message's seq

    def next_cursor(self, cursor: str) -> str:
        """The last message of a full page (the look-ahead comes next); otherwise the last
        row considered, so hidden or redacted messages are not read again. A cursor is a
        seq token (chat/cursor.py)."""
        if self.full:
            return cursor_of(self.seqs[len(self.messages) - 1])
        if self.last is not None:
            return cursor_of(self.last.seq)
        return cursor


async def _window(
    service: ChatService,
    conversation: Conversation,
    user: CrmUser,
    size: int,
    from_token: str | None,
    filter_json: str,
) -> dict[str, dict[str, Any]]:
    """Events as the puppet sees them: forwards from a token, or back from the live end."""
    resp = await service.app[MATRIX].messages(
        conversation.room_id,
        direction="f" if from_token else "b",
        limit=min(WINDOW_MAX, size + SLACK),
        from_token=from_token,
        as_user=user.mxid,
        filter_json=filter_json,
    )
    return {e["event_id"]: e for e in resp.get("chunk") or [] if "event_id" in e}


async def _one(
    service: ChatService, conversation: Conversation, user: CrmUser, event_id: str
) -> dict[str, Any] | None:
    async with service.fetch_limit:
        try:
            return await service.app[MATRIX].get_event(
                conversation.room_id, event_id, as_user=user.mxid
            )
        except MatrixError as e:
            if e.status in (403, 404):
                return None  # the homeserver does not show it to this user
            raise


async def _bodies(
    service: ChatService,
    conversation: Conversation,
    user: CrmUser,
    rows: list[RoomEvent],
    window: dict[str, dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """The rows' events as the puppet sees them (hidden ones left out)."""
    out = {r.event_id: window[r.event_id] for r in rows if r.event_id in window}
    rest = [r.event_id for r in rows if r.event_id not in out]
    fetched = await asyncio.gather(*(_one(service, conversation, user, i) for i in rest))
    out.update({i: e for i, e in zip(rest, fetched, strict=True) if e})
    return out


async def after(
    service: ChatService,
    conversation: Conversation,
    user: CrmUser,
    after_seq: int,
    limit: int,
    *,
    token: Callable[[], Awaitable[str | None]],
    filter_json: str,
    is_message: Callable[[dict[str, Any]], bool],
) -> Page:
    """Up to ``limit`` messages with seq > after_seq, oldest first.

    ``token``: a token just before the walk in the homeserver's order (from the cursor's
    /context), asked for only when the page does not reach the live end; a page that does
    (a polling client's) takes its window back from the live end instead.
    """
    index = service.app[EVENT_INDEX]
    page = Page([], False, False, None)
    found = page.messages
    seq = after_seq
    for round_ in range(MAX_ROUNDS):
        need = limit + 1 - len(found)
        rows = await index.shown_after(conversation.room_id, seq, need)
        if not rows:
            break
        window: dict[str, dict[str, Any]] = {}
        if round_ == 0:
            live_end = len(rows) < need
            from_token = None if live_end else await token()
            if live_end or from_token:
                window = await _window(
                    service, conversation, user, len(rows), from_token, filter_json
                )
        bodies = await _bodies(service, conversation, user, rows, window)
        for row in rows:
            event = bodies.get(row.event_id)
            if event is not None:
                event.setdefault("room_id", conversation.room_id)
            if event is not None and is_message(event):
                found.append(event)
                page.seqs.append(row.seq)
                if len(found) > limit:
                    page.full = page.more = True
                    break
            page.last, seq = row, row.seq
        if page.full or len(rows) < need:
            break
    else:
        page.more = True  # hidden or redacted messages all the way: let the client go on
    del found[limit:]
    return page
