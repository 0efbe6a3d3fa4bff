"""The relations index (tables ``relation`` and ``room_pins``): event ids and keys only.

A row says that ``event_id`` relates to ``target`` by ``rel_type``: ``m.replace`` (an edit),
``m.annotation`` (a reaction, ``key`` the emoji), ``m.thread`` (a thread reply),
``m.in_reply_to`` (a reply), ``m.redaction`` or ``m.room.pinned_events`` (a pin change).
Redaction and pin rows remember what they did, so handling one twice (the facade's own
call, then the transaction) has one effect. ``announced`` says whether the change went out
on the socket: a transaction handled twice (redelivered after a crash, or by a standby
while the old receiver finished) announces it once. For a redaction ``key`` is ``message`` when a
message went away and ``parent`` the message whose view changed; for a pin change ``key``
lists the messages pinned or unpinned (JSON).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mautrix.util.async_db import Database

COLUMNS = "event_id, rel_type, room_id, sender, target, key, origin_ts, parent"

REPLACE = "m.replace"
ANNOTATION = "m.annotation"
THREAD = "m.thread"
REPLY = "m.in_reply_to"
REDACTION = "m.redaction"
# Relations that change how their target looks.
AGGREGATED = (REPLACE, ANNOTATION, THREAD)


@dataclass(frozen=True)
class Relation:
    event_id: str
    rel_type: str
    room_id: str
    sender: str
    target: str
    key: str | None
    origin_ts: int
    parent: str | None = None


def _in(values: list[str], first: int = 1) -> str:
    return ", ".join(f"${first + i}" for i in range(len(values)))


class RelationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, rel: Relation) -> bool:
        """Index a relation; True when it was new. Safe to call twice."""
        added = await self.db.fetchval(
            f"INSERT INTO relation ({COLUMNS}, announced) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0) "
            "ON CONFLICT (event_id, rel_type) DO NOTHING RETURNING event_id",
            rel.event_id, rel.rel_type, rel.room_id, rel.sender, rel.target, rel.key,
            rel.origin_ts, rel.parent,
        )  # fmt: skip
        return added is not None

    async def claim_announcement(self, event_id: str, rel_types: list[str]) -> bool:
        """Whether this call is the first to announce the event's change (its rows of
        these types were not announced yet): a transaction handled twice announces once."""
        claimed = await self.db.fetch(
            "UPDATE relation SET announced=1 WHERE event_id=$1 AND announced=0 "
            f"AND rel_type IN ({_in(rel_types, 2)}) RETURNING event_id",
            event_id, *rel_types,
        )  # fmt: skip
        return bool(claimed)

    async def get(self, event_id: str, rel_type: str) -> Relation | None:
        row = await self.db.fetchrow(
            f"SELECT {COLUMNS} FROM relation WHERE event_id=$1 AND rel_type=$2",
            event_id, rel_type,
        )  # fmt: skip
        return Relation(**row) if row else None

    async def of_event(self, event_id: str) -> list[Relation]:
        """What this event relates to (a thread reply that also replies has two rows)."""
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM relation WHERE event_id=$1 AND rel_type <> $2",
            event_id, REDACTION,
        )  # fmt: skip
        return [Relation(**row) for row in rows]

    async def about(
        self, targets: list[str], types: tuple[str, ...] = AGGREGATED
    ) -> list[Relation]:
        """Every relation of these types pointing at these events: one query for a page."""
        if not targets:
            return []
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM relation WHERE target IN ({_in(targets)}) "
            f"AND rel_type IN ({_in(list(types), len(targets) + 1)})",
            *targets, *types,
        )  # fmt: skip
        return [Relation(**row) for row in rows]

    async def annotations_by(self, target: str, senders: list[str], key: str) -> list[Relation]:
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM relation WHERE target=$1 AND rel_type=$2 AND key=$3 "
            f"AND sender IN ({_in(senders, 4)})",
            target, ANNOTATION, key, *senders,
        )  # fmt: skip
        return [Relation(**row) for row in rows]

    async def latest_in_thread(self, root: str) -> Relation | None:
        row = await self.db.fetchrow(
            f"SELECT {COLUMNS} FROM relation WHERE target=$1 AND rel_type=$2 "
            "ORDER BY origin_ts DESC, event_id DESC LIMIT 1",
            root, THREAD,
        )  # fmt: skip
        return Relation(**row) if row else None

    async def latest_ts(self, event_id: str, room_id: str) -> int | None:
        """When the newest of this event's relation rows was sent, if it has any."""
        ts = await self.db.fetchval(
            "SELECT MAX(origin_ts) FROM relation WHERE event_id=$1 AND room_id=$2",
            event_id, room_id,
        )  # fmt: skip
        return int(ts) if ts is not None else None

    async def remove_event(self, event_id: str) -> None:
        """The event was redacted: it relates to nothing any more."""
        await self.db.execute(
            "DELETE FROM relation WHERE event_id=$1 AND rel_type <> $2", event_id, REDACTION
        )

    # Pins: the room's m.room.pinned_events, oldest pin first (as the state lists them).
    async def pins(self, room_ids: list[str]) -> dict[str, list[str]]:
        if not room_ids:
            return {}
        rows = await self.db.fetch(
            f"SELECT room_id, event_ids FROM room_pins WHERE room_id IN ({_in(room_ids)})",
            *room_ids,
        )
        return {row["room_id"]: json.loads(row["event_ids"]) for row in rows}

    async def set_pins(self, room_id: str, event_ids: list[str]) -> None:
        await self.db.execute(
            "INSERT INTO room_pins (room_id, event_ids) VALUES ($1, $2) "
            "ON CONFLICT (room_id) DO UPDATE SET event_ids=excluded.event_ids",
            room_id, json.dumps(event_ids),
        )  # fmt: skip
