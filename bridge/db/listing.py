"""The conversation list in one statement: each row, its last message's timeline position,
its unread count.

``GET /conversations`` is the hottest read; what the list needs per conversation is asked
together, so the cost is one round trip whatever the number of conversations.
"""

from __future__ import annotations

from dataclasses import dataclass

from mautrix.util.async_db import Database

from .conversation import COLUMNS, Conversation
from .unread import unread_of

_C_COLUMNS = ", ".join(f"c.{c.strip()}" for c in COLUMNS.split(","))


@dataclass
class Listed:
    conversation: Conversation
    # The timeline position of the last message, for its readBy (None: no last message, or
    # not indexed).
    last_pos: int | None
    unread: int


class ConversationList:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def of_user(
        self, mxid: str, own: str, kind: str | None = None, room_id: str | None = None
    ) -> list[Listed]:
        """The conversations whose room the puppet ``mxid`` joined, most recent activity
        first; ``own`` is the user's linked Matrix account (or the puppet again)."""
        extra, args = "", [mxid, own]
        if kind:
            args.append(kind)
            extra += f" AND c.kind=${len(args)}"
        if room_id:
            args.append(room_id)
            extra += f" AND c.room_id=${len(args)}"
        rows = await self.db.fetch(
            f"SELECT {_C_COLUMNS}, "
            "(SELECT l.pos FROM room_event l WHERE l.event_id = c.last_event_id) AS last_pos, "
            f"{unread_of('c.room_id')} AS unread FROM conversation c "
            "WHERE c.room_id IN (SELECT room_id FROM room_member WHERE mxid=$1 "
            f"AND membership='join'){extra} ORDER BY c.last_activity DESC",
            *args,
        )
        out = []
        for row in rows:
            # By position (COLUMNS follows the fields): a dict per row cost several times
            # as much, on the hottest read.
            *values, last_pos, unread = row
            out.append(Listed(Conversation(*values), last_pos, int(unread or 0)))
        return out
