"""Unread counts: the one SQL definition, for the list's ``unreadCount`` and ``/unread-count``.

Answered from the bridge's index alone (events, receipts, clear points): no homeserver call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..context import DATABASE
from ..db.crm_user import CrmUser

if TYPE_CHECKING:
    from .chat import ChatService


# Unread messages are counted up to this many per room ("99+" in a badge): a long backlog
# then costs no scan of the whole index.
UNREAD_CAP = 100


def unread_sql(scope: str) -> str:
    """Unread messages per room of ``scope``, up to UNREAD_CAP: the one definition of unread.

    Messages from others after the user's newest receipt and after their clear point. ``$1``
    is the puppet, ``$2`` the linked Matrix account (or the puppet again). Used by the
    conversation list's ``unreadCount`` and by ``/unread-count``.
    """
    return (
        "SELECT s.room_id, (SELECT COUNT(*) FROM (SELECT 1 FROM room_event e "
        "WHERE e.room_id = s.room_id AND e.seq > COALESCE((SELECT MAX(r.seq) "
        "FROM receipt r WHERE r.room_id = s.room_id AND r.mxid IN ($1, $2)), 0) "
        "AND e.seq > COALESCE((SELECT MAX(h.seq) FROM cleared_history h "
        "WHERE h.room_id = s.room_id AND h.mxid = $1), 0) "
        f"AND e.sender <> $1 AND e.sender <> $2 LIMIT {UNREAD_CAP}) capped) AS unread "
        f"FROM (SELECT DISTINCT room_id FROM conversation WHERE room_id IN ({scope})) s"
    )


# The rooms of the user's conversations (joined by the puppet, $1).
MY_CONVERSATION_ROOMS = (
    "SELECT m.room_id FROM room_member m JOIN conversation c ON c.room_id = m.room_id "
    "WHERE m.mxid=$1 AND m.membership='join'"
)


async def unread_count(service: ChatService, user: CrmUser) -> int:
    """The sum of ``unreadCount`` over the user's conversations, in one query."""
    rows = await service.app[DATABASE].fetch(
        unread_sql(MY_CONVERSATION_ROOMS), user.mxid, user.matrix_id or user.mxid
    )
    return sum(int(r["unread"]) for r in rows)
