"""The timeline index (table ``room_event``): ids, senders, types and order, never bodies.

``seq`` is the conversation's live order (docs/api.md, "Order"): the order in which the
bridge indexed the events of a room, which is the homeserver's stream order for everything
that came by appservice transaction. Readers page it with ``seq > cursor``, so within a
room a seq must never become visible before a smaller one: on PostgreSQL concurrent writers
(intake, mark-read's ``_index_sent``, backfill; several processes) take a per-room
transaction lock before the INSERT draws its seq, and commit before releasing it. SQLite
has one writer at a time anyway (the seq is drawn and committed under its write lock).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from mautrix.util.async_db import Database, Scheme

from .conversation import TOUCH

COLUMNS = "seq, event_id, room_id, sender, event_type, msgtype, origin_ts"
# Events a history walk shows (the index also counts m.room.encrypted, which it cannot show).
SHOWN_TYPES = ("m.room.message", "m.sticker")
# First key of the advisory lock: this table's per-room write lock, apart from other users.
ROOM_LOCK_CLASS = 0x5E01

INSERT = (
    "INSERT INTO room_event (event_id, room_id, sender, event_type, msgtype, origin_ts) "
    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING RETURNING seq"
)
# One statement, so one round trip: the CTE takes the room's lock before the row (and its
# nextval) exists, and the lock lasts until the statement's transaction has committed.
INSERT_SERIALIZED = (
    "WITH room_lock AS (SELECT pg_advisory_xact_lock($7::int4, hashtext($2::text))) "
    "INSERT INTO room_event (event_id, room_id, sender, event_type, msgtype, origin_ts) "
    "SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::bigint FROM room_lock "
    "ON CONFLICT (event_id) DO NOTHING RETURNING seq"
)

# The same, and on a new row its conversation's last message and activity ($8: the preview)
# in the same statement: a message indexed at send costs one round trip, not two. The new
# row holds the room's highest seq (drawn under the lock), so it is the last message, which
# ``ConversationStore.touch`` would decide by comparing seqs.
INSERT_SERIALIZED_TOUCHING = (
    "WITH room_lock AS (SELECT pg_advisory_xact_lock($7::int4, hashtext($2::text))), "
    "new AS (INSERT INTO room_event (event_id, room_id, sender, event_type, msgtype, origin_ts) "
    "SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::bigint FROM room_lock "
    "ON CONFLICT (event_id) DO NOTHING RETURNING seq), "
    "touched AS (UPDATE conversation SET last_event_id=$1::text, last_preview=$8::text, "
    "last_activity=CASE WHEN last_activity < $6::bigint THEN $6::bigint ELSE last_activity END "
    "WHERE room_id=$2::text AND EXISTS (SELECT 1 FROM new)) "
    "SELECT seq FROM new"
)


@dataclass
class RoomEvent:
    seq: int
    event_id: str
    room_id: str
    sender: str
    event_type: str
    msgtype: str | None
    origin_ts: int


class RoomEventIndex:
    def __init__(self, db: Database, remembered: int = 100_000) -> None:
        self.db = db
        # A row never changes once written (a redaction removes it): the positions of the
        # messages pages show are kept here, so a page asks only for those it never saw.
        self._rows: OrderedDict[str, RoomEvent] = OrderedDict()
        self._remembered = remembered

    def _remember(self, row: RoomEvent) -> None:
        self._rows[row.event_id] = row
        if len(self._rows) > self._remembered:
            self._rows.popitem(last=False)

    async def add(
        self,
        event_id: str,
        room_id: str,
        sender: str,
        event_type: str,
        msgtype: str | None,
        origin_ts: int,
        *,
        touch_preview: str | None = None,
    ) -> tuple[RoomEvent, bool]:
        """Index an event; returns it and whether it was new. Safe to call twice.

        ``touch_preview``: a new row also becomes its conversation's last message with this
        preview, as ``ConversationStore.touch`` would make it; an event indexed before is
        left to the caller to touch.
        """
        args: tuple[object, ...] = (event_id, room_id, sender, event_type, msgtype, origin_ts)
        touching = touch_preview is not None
        if self.db.scheme == Scheme.POSTGRES and touching:
            seq = await self.db.fetchval(
                INSERT_SERIALIZED_TOUCHING, *args, ROOM_LOCK_CLASS, touch_preview
            )
        elif self.db.scheme == Scheme.POSTGRES:
            seq = await self.db.fetchval(INSERT_SERIALIZED, *args, ROOM_LOCK_CLASS)
        else:
            seq = await self.db.fetchval(INSERT, *args)
            if seq is not None and touching:
                await self.db.execute(TOUCH, room_id, event_id, origin_ts, touch_preview)
        if seq is None:
            existing = await self.get(event_id)
            assert existing is not None
            return existing, False
        row = RoomEvent(seq, event_id, room_id, sender, event_type, msgtype, origin_ts)
        self._remember(row)
        return row, True

    async def get(self, event_id: str) -> RoomEvent | None:
        row = await self.db.fetchrow(
            f"SELECT {COLUMNS} FROM room_event WHERE event_id=$1", event_id
        )
        return RoomEvent(**row) if row else None

    async def latest(self, room_id: str) -> RoomEvent | None:
        row = await self.db.fetchrow(
            f"SELECT {COLUMNS} FROM room_event WHERE room_id=$1 ORDER BY seq DESC LIMIT 1",
            room_id,
        )
        return RoomEvent(**row) if row else None

    async def seq_at(self, room_id: str, ts: int) -> int:
        """The newest seq of the room's events from no later than ``ts`` (0: none)."""
        seq = await self.db.fetchval(
            "SELECT COALESCE(MAX(seq), 0) FROM room_event WHERE room_id=$1 AND origin_ts <= $2",
            room_id, ts,
        )  # fmt: skip
        return int(seq or 0)

    async def newest_until(self, room_id: str, ts: int) -> RoomEvent | None:
        """The room's newest event (in the live order) from no later than ``ts``."""
        row = await self.db.fetchrow(
            f"SELECT {COLUMNS} FROM room_event WHERE room_id=$1 AND origin_ts <= $2 "
            "ORDER BY seq DESC LIMIT 1",
            room_id, ts,
        )  # fmt: skip
        return RoomEvent(**row) if row else None

    async def since(self, room_id: str, ts: int, upto_seq: int, limit: int) -> list[RoomEvent]:
        """Up to ``limit`` rows of a room from ``ts`` on (origin ms) with seq <= upto_seq,
        the newest ones, oldest first."""
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM room_event WHERE room_id=$1 AND origin_ts >= $2 "
            "AND seq <= $3 ORDER BY seq DESC LIMIT $4",
            room_id, ts, upto_seq, limit,
        )  # fmt: skip
        return [RoomEvent(**row) for row in reversed(rows)]

    async def at_or_before(self, room_id: str, seq: int) -> RoomEvent | None:
        """The room's row at ``seq``, or the newest before it."""
        row = await self.db.fetchrow(
            f"SELECT {COLUMNS} FROM room_event WHERE room_id=$1 AND seq <= $2 "
            "ORDER BY seq DESC LIMIT 1",
            room_id, seq,
        )  # fmt: skip
        return RoomEvent(**row) if row else None

    async def count(self, room_id: str) -> int:
        return await self.db.fetchval("SELECT COUNT(*) FROM room_event WHERE room_id=$1", room_id)

    async def get_many(self, event_ids: list[str]) -> dict[str, RoomEvent]:
        if not event_ids:
            return {}
        placeholders = ", ".join(f"${i + 1}" for i in range(len(event_ids)))
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM room_event WHERE event_id IN ({placeholders})", *event_ids
        )
        return {row["event_id"]: RoomEvent(**row) for row in rows}

    async def positions(self, event_ids: list[str]) -> dict[str, RoomEvent]:
        """``get_many`` for a page's messages, remembered. A row another process removed
        (a redaction) may still be found here; that message is gone from the pages too."""
        found = {e: row for e in event_ids if (row := self._rows.get(e)) is not None}
        if missing := [e for e in event_ids if e not in found]:
            for event_id, row in (await self.get_many(missing)).items():
                self._remember(row)
                found[event_id] = row
        return found

    async def newest(self, room_id: str, limit: int) -> list[RoomEvent]:
        """The room's newest ``limit`` events in the live order, newest first (remembered as
        :meth:`positions` would)."""
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM room_event WHERE room_id=$1 ORDER BY seq DESC LIMIT $2",
            room_id, limit,
        )  # fmt: skip
        found = [RoomEvent(**row) for row in rows]
        for row in found:
            self._remember(row)
        return found

    async def between(self, room_id: str, after_seq: int, upto_seq: int) -> list[RoomEvent]:
        """Events of a room with after_seq < seq <= upto_seq, oldest first."""
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM room_event WHERE room_id=$1 AND seq > $2 AND seq <= $3 "
            "ORDER BY seq",
            room_id, after_seq, upto_seq,
        )  # fmt: skip
        return [RoomEvent(**row) for row in rows]

    async def shown_after(self, room_id: str, after_seq: int, limit: int) -> list[RoomEvent]:
        """Up to ``limit`` events a history walk shows, with seq > after_seq, oldest first."""
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM room_event WHERE room_id=$1 AND seq > $2 "
            "AND event_type IN ($3, $4) ORDER BY seq LIMIT $5",
            room_id, after_seq, *SHOWN_TYPES, limit,
        )  # fmt: skip
        return [RoomEvent(**row) for row in rows]

    async def remove(self, event_id: str) -> RoomEvent | None:
        """A redacted message leaves the index (unread counts, lastMessage, cursors)."""
        existing = await self.get(event_id)
        self._rows.pop(event_id, None)
        if existing is not None:
            await self.db.execute("DELETE FROM room_event WHERE event_id=$1", event_id)
        return existing
