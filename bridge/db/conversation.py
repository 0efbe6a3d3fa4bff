"""Conversations as the facade lists them: one per project room or DM room."""

from __future__ import annotations

from dataclasses import dataclass, field

from mautrix.util.async_db import Database

from ..ids import conversation_id_for_room
from .crm_user import now_ms
from .receipt import _rows_changed

COLUMNS = (
    "conversation_id, room_id, kind, project_id, direct_key, created_at, last_event_id, "
    "last_activity, last_preview"
)

_C_COLUMNS = ", ".join(f"c.{c.strip()}" for c in COLUMNS.split(","))
# The rooms an account ($1) has joined, as a subquery.
JOINED_ROOMS = "SELECT room_id FROM room_member WHERE mxid=$1 AND membership='join'"
# The rooms of the conversations an account ($1) has joined, as a subquery.
MY_CONVERSATION_ROOMS = (
    "SELECT m.room_id FROM room_member m JOIN conversation c ON c.room_id = m.room_id "
    "WHERE m.mxid=$1 AND m.membership='join'"
)

# A message was indexed ($1 room, $2 event, $3 its ts, $4 its preview): see ``touch``.
TOUCH = (
    "UPDATE conversation SET last_event_id=$2, last_preview=$4, "
    "last_activity=CASE WHEN last_activity < $3 THEN $3 ELSE last_activity END "
    "WHERE room_id=$1 AND NOT EXISTS (SELECT 1 FROM room_event held, room_event new "
    "WHERE held.event_id = conversation.last_event_id AND new.event_id = $2 "
    "AND held.seq > new.seq)"
)
PROJECT = "project"
DIRECT = "direct"


def direct_key(crm_user_a: str, crm_user_b: str) -> str:
    """The one DM between two CRM users, whichever of them asks."""
    return "\x1f".join(sorted((crm_user_a, crm_user_b)))


@dataclass
class Conversation:
    conversation_id: str
    room_id: str
    kind: str
    project_id: str | None = None
    direct_key: str | None = None
    created_at: int = field(default_factory=now_ms)
    last_event_id: str | None = None
    last_activity: int = field(default_factory=now_ms)
    # The last message's sender, type and bounded content (chat/preview.py), as JSON.
    last_preview: str | None = None


class ConversationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, conversation_id: str) -> Conversation | None:
        row = await self.db.fetchrow(
            f"SELECT {COLUMNS} FROM conversation WHERE conversation_id=$1", conversation_id
        )
        return Conversation(**row) if row else None

    async def get_by_room(self, room_id: str) -> Conversation | None:
        row = await self.db.fetchrow(
            f"SELECT {COLUMNS} FROM conversation WHERE room_id=$1", room_id
        )
        return Conversation(**row) if row else None

    async def get_direct(self, key: str) -> Conversation | None:
        row = await self.db.fetchrow(f"SELECT {COLUMNS} FROM conversation WHERE direct_key=$1", key)
        return Conversation(**row) if row else None

    async def add(
        self,
        room_id: str,
        kind: str,
        project_id: str | None = None,
        key: str | None = None,
    ) -> Conversation:
        conversation = Conversation(
            conversation_id=conversation_id_for_room(room_id),
            room_id=room_id,
            kind=kind,
            project_id=project_id,
            direct_key=key,
        )
        await self.db.execute(
            f"INSERT INTO conversation ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
            "ON CONFLICT (room_id) DO NOTHING",
            conversation.conversation_id, room_id, kind, project_id, key,
            conversation.created_at, None, conversation.last_activity, None,
        )  # fmt: skip
        return await self.get_by_room(room_id) or conversation

    async def directs_below(self, levels_version: int, limit: int = 500) -> list[str]:
        """Rooms of DMs whose power levels were not brought to this version yet."""
        rows = await self.db.fetch(
            "SELECT room_id FROM conversation WHERE kind=$1 AND levels_version < $2 "
            "ORDER BY room_id LIMIT $3",
            DIRECT, levels_version, limit,
        )  # fmt: skip
        return [r["room_id"] for r in rows]

    async def set_levels_version(self, room_id: str, levels_version: int) -> None:
        await self.db.execute(
            "UPDATE conversation SET levels_version=$2 WHERE room_id=$1", room_id, levels_version
        )

    async def touch(self, room_id: str, event_id: str, ts: int, preview: str | None = None) -> None:
        """A message was indexed: it is the last message (with its preview) unless the current
        one comes later in the live order (seq; a message mark-read indexed early comes back
        later), and the last activity (the listing's sort key) is the newest timestamp seen."""
        await self.db.execute(TOUCH, room_id, event_id, ts, preview)

    async def set_preview(self, room_id: str, event_id: str, preview: str | None) -> bool:
        """Replace the preview if ``event_id`` is still the conversation's last message."""
        result = await self.db.execute(
            "UPDATE conversation SET last_preview=$3 WHERE room_id=$1 AND last_event_id=$2",
            room_id, event_id, preview,
        )  # fmt: skip
        return _rows_changed(result) > 0

    async def joined(self, conversation_id: str, mxid: str) -> Conversation | None:
        """The conversation, only when this Matrix account has joined its room."""
        row = await self.db.fetchrow(
            f"SELECT {_C_COLUMNS} FROM conversation c "
            "JOIN room_member m ON m.room_id = c.room_id "
            "WHERE c.conversation_id=$1 AND m.mxid=$2 AND m.membership='join'",
            conversation_id, mxid,
        )  # fmt: skip
        return Conversation(**row) if row else None

    async def of_member(self, mxid: str) -> list[Conversation]:
        """The conversations whose room this account joined, in no particular order."""
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM conversation WHERE room_id IN ({MY_CONVERSATION_ROOMS})", mxid
        )
        return [Conversation(**row) for row in rows]

    async def room_ids(self) -> list[str]:
        rows = await self.db.fetch("SELECT room_id FROM conversation")
        return [r["room_id"] for r in rows]

    async def last_falls_back(self, room_id: str, gone: str, newest: str | None) -> None:
        """The last message ``gone`` went away: ``newest`` is the last one now, its preview
        unknown until a listing fills it in."""
        await self.db.execute(
            "UPDATE conversation SET last_event_id=$2, last_preview=NULL "
            "WHERE room_id=$1 AND last_event_id=$3",
            room_id, newest, gone,
        )  # fmt: skip

    async def ids_by_room(self, room_ids: list[str]) -> dict[str, str]:
        """Conversation ids of these rooms (those that have one), in one query."""
        if not room_ids:
            return {}
        placeholders = ", ".join(f"${i + 1}" for i in range(len(room_ids)))
        rows = await self.db.fetch(
            f"SELECT room_id, conversation_id FROM conversation WHERE room_id IN ({placeholders})",
            *room_ids,
        )
        return {r["room_id"]: r["conversation_id"] for r in rows}

    async def ids_joined_by(self, mxids: list[str]) -> list[str]:
        """Conversations whose room any of these Matrix accounts has joined."""
        if not mxids:
            return []
        placeholders = ", ".join(f"${i + 1}" for i in range(len(mxids)))
        rows = await self.db.fetch(
            "SELECT DISTINCT c.conversation_id FROM conversation c "
            "JOIN room_member m ON m.room_id = c.room_id "
            f"WHERE m.membership = 'join' AND m.mxid IN ({placeholders})",
            *mxids,
        )
        return [r["conversation_id"] for r in rows]
