"""Unread counts: the one SQL definition, for the list's ``unreadCount`` and ``/unread-count``.

Answered from the bridge's index alone (events, receipts, clear points): no homeserver call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..context import DATABASE
from ..db.crm_user import CrmUser

if TYPE_CHECKING:
    from .chat import ChatService


def unread_sql(scope: str) -> str:
    """Unread messages per room of ``scope``: the one definition of unread.

    Messages from others after the user's newest receipt and after their clear point. ``$1``
    is the puppet, ``$2`` the linked Matrix account (or the puppet again). Used by the
    conversation list's ``unreadCount`` and by ``/unread-count``.
    """
    return (
        "SELECT e.room_id, COUNT(*) AS unread FROM room_event e "
        "LEFT JOIN (SELECT room_id, MAX(seq) AS seq FROM receipt "
        "WHERE mxid=$1 OR mxid=$2 GROUP BY room_id) r ON r.room_id = e.room_id "
        "LEFT JOIN cleared_history h ON h.room_id = e.room_id AND h.mxid = $1 "
        f"WHERE e.room_id IN ({scope}) AND e.seq > COALESCE(r.seq, 0) "
        "AND e.seq > COALESCE(h.seq, 0) "
        "AND e.sender <> $1 AND e.sender <> $2 GROUP BY e.room_id"
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
