"""Unread counts: the one SQL definition, for the list's ``unreadCount`` and ``/unread-count``.

Messages from others after the user's newest receipt and after their clear point, in the
homeserver's timeline order (``room_event.pos``, as Synapse counts by stream order), from the
index alone (``room_event``, ``receipt``, ``cleared_history``): no homeserver call.
"""

from __future__ import annotations

from mautrix.util.async_db import Database

from .conversation import MY_CONVERSATION_ROOMS
from .receipt import position_of

# Unread messages are counted up to this many per room ("99+" in a badge): a long backlog
# then costs no scan of the whole index.
UNREAD_CAP = 100


def unread_of(room: str) -> str:
    """The unread count of the room in column ``room``, up to UNREAD_CAP: the one definition.

    ``$1`` is the puppet, ``$2`` the linked Matrix account (or the puppet again)."""
    return (
        "(SELECT COUNT(*) FROM (SELECT 1 FROM room_event e "
        f"WHERE e.room_id = {room} AND e.pos > COALESCE((SELECT MAX({position_of('r')}) "
        f"FROM receipt r WHERE r.room_id = {room} AND r.mxid IN ($1, $2)), 0) "
        f"AND e.pos > COALESCE((SELECT MAX({position_of('h')}) FROM cleared_history h "
        f"WHERE h.room_id = {room} AND h.mxid = $1), 0) "
        f"AND e.sender <> $1 AND e.sender <> $2 LIMIT {UNREAD_CAP}) capped)"
    )


class UnreadCounter:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def by_room(self, mxid: str, own: str) -> dict[str, int]:
        """Unread messages per conversation room the puppet ``mxid`` joined, up to UNREAD_CAP
        each. ``own``: the user's linked Matrix account (or the puppet again), whose messages
        and receipts are the user's too."""
        rooms = (
            f"SELECT DISTINCT room_id FROM conversation WHERE room_id IN ({MY_CONVERSATION_ROOMS})"
        )
        rows = await self.db.fetch(
            f"SELECT s.room_id, {unread_of('s.room_id')} AS unread FROM ({rooms}) s", mxid, own
        )
        return {r["room_id"]: int(r["unread"]) for r in rows}
