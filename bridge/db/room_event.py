"""The timeline index (table ``room_event``): ids, senders, types and order, never bodies.

Two orders (docs/api.md, "Order"):

* ``seq`` is the conversation's live order: the order in which the bridge indexed the events
  of a room. Readers page it with ``seq > cursor``, so within a room a seq must never become
  visible before a smaller one: on PostgreSQL concurrent writers (intake, the send path,
  backfill; several processes) take a per-room transaction lock before the INSERT draws its
  seq, and commit before releasing it. SQLite has one writer at a time anyway (the seq is
  drawn and committed under its write lock).
* ``pos`` is the event's position in the homeserver's timeline (Synapse's stream order),
  which unread counts, ``readBy``, ``messages_read`` and mark-read follow. Synapse sends an
  appservice one transaction at a time, each room's events in stream order, so the events
  that came by transaction are a prefix of the room's timeline, in arrival order: the first
  transaction that brings an event gives it the next final position. An event only the
  send path has indexed is not in that prefix yet, so it comes after every final position:
  its provisional position is ``PROVISIONAL`` plus a counter (the order its sends
  completed in), until its transaction places it. A backfilled event (the ``/messages``
  walk after downtime) gets the next final position when it is new to the index, and keeps
  it. A placed position never changes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from mautrix.util.async_db import Database, Scheme

from .conversation import TOUCH

COLUMNS = "seq, event_id, room_id, sender, event_type, msgtype, origin_ts, pos"
# Events a history walk shows (the index also counts m.room.encrypted, which it cannot show).
SHOWN_TYPES = ("m.room.message", "m.sticker")
# First key of the advisory lock: this table's per-room write lock, apart from other users.
ROOM_LOCK_CLASS = 0x5E01

# Positions from here up are provisional: above every final one (module docstring).
PROVISIONAL = 1 << 50
# How an event reached the index, which decides its position.
Arrival = Literal["transaction", "backfill", "sent"]
TRANSACTION: Arrival = "transaction"  # the homeserver's transaction: final, places a row
BACKFILL: Arrival = "backfill"  # the /messages walk after downtime: final for a new row
SENT: Arrival = "sent"  # the send path, or a page that met an event on its way: provisional

# The next position: final ($offset 0) or provisional ($offset PROVISIONAL). PostgreSQL
# draws it from a sequence, under the room's lock and in the order transactions are handled;
# SQLite from the room's rows, under its single writer.
_PG_POS = "{offset}::bigint + nextval('room_event_pos')"
_SQLITE_POS = (
    "(SELECT COALESCE(MAX(pos), {offset}) + 1 FROM room_event "
    "WHERE room_id = $2 AND pos >= {offset} AND pos < {offset} + {span})"
)

INSERT = (
    "INSERT INTO room_event (event_id, room_id, sender, event_type, msgtype, origin_ts, pos) "
    f"VALUES ($1, $2, $3, $4, $5, $6, {_SQLITE_POS.format(offset='$7', span=PROVISIONAL)}) "
    "ON CONFLICT (event_id) DO NOTHING RETURNING seq, pos"
)
# One statement, so one round trip: the CTE takes the room's lock before the row (and its
# nextval) exists, and the lock lasts until the statement's transaction has committed.
INSERT_SERIALIZED = (
    "WITH room_lock AS (SELECT pg_advisory_xact_lock($7::int4, hashtext($2::text))) "
    "INSERT INTO room_event (event_id, room_id, sender, event_type, msgtype, origin_ts, pos) "
    "SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::bigint, "
    f"{_PG_POS.format(offset='$8')} FROM room_lock "
    "ON CONFLICT (event_id) DO NOTHING RETURNING seq, pos"
)

# The same, and on a new row its conversation's last message and activity ($8: the preview)
# in the same statement: a message indexed at send costs one round trip, not two. The new
# row holds the room's highest seq (drawn under the lock), so it is the last message, which
# ``ConversationStore.touch`` would decide by comparing seqs.
INSERT_SERIALIZED_TOUCHING = (
    "WITH room_lock AS (SELECT pg_advisory_xact_lock($7::int4, hashtext($2::text))), "
    "new AS (INSERT INTO room_event "
    "(event_id, room_id, sender, event_type, msgtype, origin_ts, pos) "
    "SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::bigint, "
    f"{_PG_POS.format(offset='$9')} FROM room_lock "
    "ON CONFLICT (event_id) DO NOTHING RETURNING seq, pos), "
    "touched AS (UPDATE conversation SET last_event_id=$1::text, last_preview=$8::text, "
    "last_activity=CASE WHEN last_activity < $6::bigint THEN $6::bigint ELSE last_activity END "
    "WHERE room_id=$2::text AND EXISTS (SELECT 1 FROM new)) "
    "SELECT seq, pos FROM new"
)

# A transaction brought an event only the send path had indexed: it takes the next final
# position. A placed event keeps its own (a transaction handled again changes nothing).
PLACE = {
    "postgres": "UPDATE room_event SET pos = nextval('room_event_pos') "
    f"WHERE event_id = $1 AND pos >= {PROVISIONAL} RETURNING {COLUMNS}",
    "sqlite": f"UPDATE room_event SET pos = {_SQLITE_POS.format(offset=0, span=PROVISIONAL)} "
    f"WHERE event_id = $1 AND pos >= {PROVISIONAL} RETURNING {COLUMNS}",
}
# Rows that point at an event by id keep its last position when it leaves the index.
_KEEP_POSITION = [
    f"UPDATE {table} SET pos = $3 WHERE room_id = $2 AND event_id = $1"
    for table in ("receipt", "announced_receipt", "cleared_history")
]


@dataclass
class RoomEvent:
    seq: int
    event_id: str
    room_id: str
    sender: str
    event_type: str
    msgtype: str | None
    origin_ts: int
    # Position in the homeserver's timeline (final below PROVISIONAL).
    pos: int

    @property
    def placed(self) -> bool:
        """Whether the homeserver's order placed this event (its position is final)."""
        return self.pos < PROVISIONAL


class RoomEventIndex:
    def __init__(self, db: Database, remembered: int = 100_000) -> None:
        self.db = db
        # A placed row never changes (a redaction removes it): the rows of the messages
        # pages show are kept here, so a page asks only for those it never saw.
        self._rows: OrderedDict[str, RoomEvent] = OrderedDict()
        self._remembered = remembered

    def _remember(self, row: RoomEvent) -> None:
        if not row.placed:
            return
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
        arrival: Arrival = TRANSACTION,
    ) -> tuple[RoomEvent, bool]:
        """Index an event; returns it and whether it was new. Safe to call twice.

        ``touch_preview``: a new row also becomes its conversation's last message with this
        preview, as ``ConversationStore.touch`` would make it; an event indexed before is
        left to the caller to touch. ``arrival``: how it came (TRANSACTION, BACKFILL or SENT),
        which decides its timeline position (module docstring).
        """
        args: tuple[object, ...] = (event_id, room_id, sender, event_type, msgtype, origin_ts)
        offset = PROVISIONAL if arrival == SENT else 0
        touching = touch_preview is not None
        if self.db.scheme == Scheme.POSTGRES and touching:
            row = await self.db.fetchrow(
                INSERT_SERIALIZED_TOUCHING, *args, ROOM_LOCK_CLASS, touch_preview, offset
            )
        elif self.db.scheme == Scheme.POSTGRES:
            row = await self.db.fetchrow(INSERT_SERIALIZED, *args, ROOM_LOCK_CLASS, offset)
        else:
            row = await self.db.fetchrow(INSERT, *args, offset)
            if row is not None and touching:
                await self.db.execute(TOUCH, room_id, event_id, origin_ts, touch_preview)
        if row is None:
            existing = await self._place(event_id, room_id) if arrival == TRANSACTION else None
            existing = existing or await self.get(event_id)
            assert existing is not None
            return existing, False
        indexed = RoomEvent(
            row["seq"], event_id, room_id, sender, event_type, msgtype, origin_ts, row["pos"]
        )
        self._remember(indexed)
        return indexed, True

    async def _place(self, event_id: str, room_id: str) -> RoomEvent | None:
        """The transaction of an event the send path indexed: the next final position is its
        own. None when it was placed already."""
        if self.db.scheme == Scheme.POSTGRES:
            row = await self.db.fetchrow(PLACE["postgres"], event_id)
        else:
            row = await self.db.fetchrow(PLACE["sqlite"], event_id, room_id)
        if row is None:
            return None
        placed = RoomEvent(**row)
        self._remember(placed)
        return placed

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

    async def last_read_point(self, room_id: str) -> RoomEvent | None:
        """The room's newest event in the timeline order (mark-read without a message)."""
        row = await self.db.fetchrow(
            f"SELECT {COLUMNS} FROM room_event WHERE room_id=$1 ORDER BY pos DESC LIMIT 1",
            room_id,
        )
        return RoomEvent(**row) if row else None

    async def pos_at(self, room_id: str, ts: int) -> int:
        """The newest timeline position of the room's events from no later than ``ts``."""
        pos = await self.db.fetchval(
            "SELECT COALESCE(MAX(pos), 0) FROM room_event WHERE room_id=$1 AND origin_ts <= $2",
            room_id, ts,
        )  # fmt: skip
        return int(pos or 0)

    async def newest_until(self, room_id: str, ts: int) -> RoomEvent | None:
        """The room's newest event (in the timeline order) from no later than ``ts``."""
        row = await self.db.fetchrow(
            f"SELECT {COLUMNS} FROM room_event WHERE room_id=$1 AND origin_ts <= $2 "
            "ORDER BY pos DESC LIMIT 1",
            room_id, ts,
        )  # fmt: skip
        return RoomEvent(**row) if row else None

    async def newest_seqs(self, room_ids: list[str]) -> dict[str, int]:
        """Per room, its highest seq (rooms with no row are left out), a few hundred rooms
        per statement."""
        found: dict[str, int] = {}
        for start in range(0, len(room_ids), 500):
            chunk = room_ids[start : start + 500]
            placeholders = ", ".join(f"${i + 1}" for i in range(len(chunk)))
            rows = await self.db.fetch(
                "SELECT room_id, MAX(seq) AS seq FROM room_event "
                f"WHERE room_id IN ({placeholders}) GROUP BY room_id",
                *chunk,
            )
            found.update({row["room_id"]: row["seq"] for row in rows})
        return found

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
        """Events of a room with after_seq < seq <= upto_seq, oldest first (live order)."""
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM room_event WHERE room_id=$1 AND seq > $2 AND seq <= $3 "
            "ORDER BY seq",
            room_id, after_seq, upto_seq,
        )  # fmt: skip
        return [RoomEvent(**row) for row in rows]

    async def read_between(self, room_id: str, after_pos: int, upto_pos: int) -> list[RoomEvent]:
        """Events of a room with after_pos < pos <= upto_pos, in the timeline order: what a
        receipt moved from one position to the other newly reads."""
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM room_event WHERE room_id=$1 AND pos > $2 AND pos <= $3 "
            "ORDER BY pos",
            room_id, after_pos, upto_pos,
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
        """A redacted message leaves the index (unread counts, lastMessage, cursors). Receipts
        and clear points at it keep its last position."""
        existing = await self.get(event_id)
        self._rows.pop(event_id, None)
        if existing is not None:
            for statement in _KEEP_POSITION:
                await self.db.execute(statement, event_id, existing.room_id, existing.pos)
            await self.db.execute("DELETE FROM room_event WHERE event_id=$1", event_id)
        return existing
