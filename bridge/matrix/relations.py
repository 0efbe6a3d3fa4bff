"""Relations from Matrix events: what each event edits, reacts to, replies to, threads
under, redacts or pins, applied to the relations index idempotently.

``apply`` is called by the intake's indexer for every timeline event of a transaction, and
by the facade right after it sent such an event itself (so its answer already shows it).
Both calls have one effect; the transaction's call then tells the listeners (the real-time
fan-out) which messages changed or went away, every time, so a replayed transaction only
repeats an idempotent update.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..context import CONVERSATIONS, DATABASE, EVENT_INDEX
from ..db.relation import (
    AGGREGATED,
    ANNOTATION,
    REDACTION,
    REPLACE,
    REPLY,
    THREAD,
    Relation,
    RelationStore,
)
from ..db.room_event import RoomEvent

log = logging.getLogger("bridge.matrix.relations")

PINNED = "m.room.pinned_events"
MESSAGE_TYPES = frozenset({"m.room.message", "m.sticker", "m.room.encrypted"})
MAX_ID = 255
MAX_KEY = 100


@dataclass
class Effect:
    """What an event did to the messages of a room, by event id."""

    room_id: str
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    # A redaction: copies of the changed messages may hold what it took away (a bundled edit).
    redaction: bool = False
    # A change of the room's pins: which messages it pinned and unpinned, by whom and when.
    pinned: list[str] = field(default_factory=list)
    unpinned: list[str] = field(default_factory=list)
    by: str | None = None
    at: int | None = None
    # The event and its relation rows: announced once, whoever handles it again (notify).
    event_id: str | None = None
    rel_types: list[str] = field(default_factory=list)


Listener = Callable[[Effect], Awaitable[None]]


class Relations:
    """The index's service: the store, and each room's pins cached in memory."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.listeners: list[Listener] = []
        # Room -> its pins (the index's copy): capped at 20,000 rooms (emptied past it).
        self._pins: dict[str, list[str]] = {}
        self._room_locks: dict[str, asyncio.Lock] = {}

    def room_lock(self, room_id: str) -> asyncio.Lock:
        """Serialises, in this process, the two ways one redaction or pin change is applied
        (the facade's own send and the transaction): each reads what the other writes, so
        interleaved, the second would see the change done without its record and tell the
        listeners nothing (a lost message_pinned or message_deleted)."""
        locks = self._room_locks
        if len(locks) > 10000:
            for key in [k for k, lock in locks.items() if not lock.locked()]:
                del locks[key]
        return locks.setdefault(room_id, asyncio.Lock())

    @property
    def store(self) -> RelationStore:
        return RelationStore(self.app[DATABASE])

    async def pins_of(self, room_ids: list[str]) -> dict[str, list[str] | None]:
        """Known pins per room (None: never seen, ask the homeserver if it matters)."""
        out: dict[str, list[str] | None] = {r: self._pins.get(r) for r in room_ids}
        missing = [r for r, pins in out.items() if pins is None]
        if missing:
            for room_id, pins in (await self.store.pins(missing)).items():
                self._remember(room_id, pins)
                out[room_id] = pins
        return out

    async def set_pins(self, room_id: str, pins: list[str]) -> None:
        await self.store.set_pins(room_id, pins)
        self._remember(room_id, pins)

    def _remember(self, room_id: str, pins: list[str]) -> None:
        if len(self._pins) > 20000:
            self._pins.clear()
        self._pins[room_id] = pins


RELATIONS = web.AppKey("relations", Relations)


def ensure(app: web.Application) -> Relations:
    """The app's relations service (a facade without transactions has one too)."""
    if RELATIONS not in app:
        app[RELATIONS] = Relations(app)
    return app[RELATIONS]


def _event_id(value: Any) -> str | None:
    ok = isinstance(value, str) and value.startswith("$") and len(value) <= MAX_ID
    return value if ok else None


def relates_to(content: dict[str, Any]) -> dict[str, Any]:
    rel = content.get("m.relates_to")
    return rel if isinstance(rel, dict) else {}


def rel_type_of(content: dict[str, Any]) -> str | None:
    rel_type = relates_to(content).get("rel_type")
    return rel_type if isinstance(rel_type, str) else None


def reply_target(content: dict[str, Any]) -> str | None:
    """The event a message answers (not a thread's fallback reply)."""
    rel = relates_to(content)
    if rel.get("rel_type") == THREAD and rel.get("is_falling_back") is True:
        return None
    reply = rel.get("m.in_reply_to")
    return _event_id(reply.get("event_id")) if isinstance(reply, dict) else None


def thread_root(content: dict[str, Any]) -> str | None:
    rel = relates_to(content)
    return _event_id(rel.get("event_id")) if rel.get("rel_type") == THREAD else None


def is_timeline_message(event: dict[str, Any], *, in_threads: bool = False) -> bool:
    """A message of the main timeline: not state, not redacted, not an edit, not in a thread
    (``in_threads``: or a message of a thread). The one definition of "a message".

    Edits, reactions and redactions change other messages; thread replies live in their
    thread (as in Element). None of them is a message of its own, lastMessage or unread.
    """
    if event.get("type") not in MESSAGE_TYPES or "state_key" in event:
        return False
    content = event.get("content")
    if not isinstance(content, dict) or not content:
        return False
    return rel_type_of(content) not in ((REPLACE,) if in_threads else (REPLACE, THREAD))


def msgtype_of(content: dict[str, Any]) -> str | None:
    """A client can put anything in msgtype; only a string is worth indexing."""
    msgtype = content.get("msgtype")
    return msgtype if isinstance(msgtype, str) else None


def relations_in(event: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(rel_type, target, key) of a non-state event's relations."""
    content = event.get("content")
    if not isinstance(content, dict) or "state_key" in event:
        return []
    rel = relates_to(content)
    rel_type, target = rel.get("rel_type"), _event_id(rel.get("event_id"))
    out: list[tuple[str, str, str | None]] = []
    if event.get("type") == "m.reaction":
        key = rel.get("key")
        if rel_type == ANNOTATION and target and isinstance(key, str) and 0 < len(key) <= MAX_KEY:
            out.append((ANNOTATION, target, key))
        return out
    if event.get("type") not in MESSAGE_TYPES:
        return out
    if rel_type in (REPLACE, THREAD) and target:
        out.append((rel_type, target, None))
    if rel_type != REPLACE and (replied := reply_target(content)):
        out.append((REPLY, replied, None))
    return out


def redacted_id(event: dict[str, Any]) -> str | None:
    """``redacts`` is top-level up to room version 10, in content from v11."""
    content = event.get("content") if isinstance(event.get("content"), dict) else {}
    return _event_id(event.get("redacts")) or _event_id(content.get("redacts"))


async def apply(app: web.Application, event: dict[str, Any]) -> Effect | None:
    """Index what the event relates to; the messages it changed, or None."""
    kind = event.get("type")
    room_id = event["room_id"]
    if kind == "m.room.redaction":
        async with app[RELATIONS].room_lock(room_id):
            return await _redact(app, event)
    if "state_key" in event:
        if kind == PINNED and event.get("state_key") == "":
            async with app[RELATIONS].room_lock(room_id):
                return await _pinned(app, event)
        return None
    found = relations_in(event)
    if not found:
        return None
    store = app[RELATIONS].store
    ts = int(event.get("origin_server_ts") or time.time() * 1000)
    effect = Effect(room_id, event_id=event["event_id"], rel_types=[r for r, _, _ in found])
    for rel_type, target, key in found:
        relation = Relation(event["event_id"], rel_type, room_id, event["sender"], target, key, ts)
        await store.add(relation)
        if rel_type in AGGREGATED:
            effect.changed.append(target)
    return effect


async def _redact(app: web.Application, event: dict[str, Any]) -> Effect | None:
    target = redacted_id(event)
    if target is None:
        return None
    room_id = event["room_id"]
    store = app[RELATIONS].store
    done = await store.get(event["event_id"], REDACTION)
    if done is None:
        own = [r for r in await store.of_event(target) if r.room_id == room_id]
        removed = await app[EVENT_INDEX].get(target)
        if removed is not None and removed.room_id != room_id:
            removed = None
        parent = next((r.target for r in own if r.rel_type in AGGREGATED), None)
        is_message = removed is not None or any(r.rel_type == THREAD for r in own)
        await store.remove_event(target)
        if removed is not None:
            await app[EVENT_INDEX].remove(target)
            await _last_message_back(app, room_id, target)
        done = Relation(
            event["event_id"], REDACTION, room_id, event["sender"], target,
            "message" if is_message else None,
            int(event.get("origin_server_ts") or time.time() * 1000), parent,
        )  # fmt: skip
        await store.add(done)
    effect = Effect(room_id, redaction=True, event_id=event["event_id"], rel_types=[REDACTION])
    if done.parent:
        effect.changed.append(done.parent)
    if done.key == "message":
        effect.deleted.append(target)
    return effect


async def _last_message_back(app: web.Application, room_id: str, event_id: str) -> None:
    """The newest message went away: lastMessage falls back to the newest one left. Its
    preview is not at hand here; the next listing fills it from the homeserver once."""
    conversations = app[CONVERSATIONS]
    conversation = await conversations.get_by_room(room_id)
    if conversation is None or conversation.last_event_id != event_id:
        return
    newest = await app[EVENT_INDEX].latest(room_id)
    await conversations.last_falls_back(room_id, event_id, newest.event_id if newest else None)


async def _pinned(app: web.Application, event: dict[str, Any]) -> Effect:
    """New pins; the state event's row remembers which messages it changed (idempotent)."""
    room_id = event["room_id"]
    relations = app[RELATIONS]
    done = await relations.store.get(event["event_id"], PINNED)
    if done is not None:
        recorded = json.loads(done.key or "[]")
        if isinstance(recorded, list):  # recorded before pins and unpins were told apart
            return Effect(room_id, changed=recorded, event_id=done.event_id, rel_types=[PINNED])
        return Effect(
            room_id, changed=recorded["p"] + recorded["u"], pinned=recorded["p"],
            unpinned=recorded["u"], by=done.sender, at=done.origin_ts,
            event_id=done.event_id, rel_types=[PINNED],
        )  # fmt: skip
    content = event.get("content") if isinstance(event.get("content"), dict) else {}
    listed = content.get("pinned") if isinstance(content.get("pinned"), list) else []
    pins = list(dict.fromkeys(p for p in listed if _event_id(p)))
    before = (await relations.pins_of([room_id]))[room_id] or []
    await relations.set_pins(room_id, pins)
    pinned = [p for p in pins if p not in before][:100]
    unpinned = [p for p in before if p not in pins][:100]
    ts = int(event.get("origin_server_ts") or time.time() * 1000)
    await relations.store.add(
        Relation(event["event_id"], PINNED, room_id, event["sender"], room_id,
                 json.dumps({"p": pinned, "u": unpinned}), ts)
    )  # fmt: skip
    return Effect(
        room_id, changed=pinned + unpinned, pinned=pinned, unpinned=unpinned,
        by=event["sender"], at=ts, event_id=event["event_id"], rel_types=[PINNED],
    )  # fmt: skip


async def read_position(app: web.Application, room_id: str, event_id: str) -> RoomEvent | None:
    """Where a receipt at this event reads up to: the event itself when it is a message,
    else (Element marks an edit, a reaction or a redaction read) the newest message of the
    room from before it."""
    indexed = await app[EVENT_INDEX].get(event_id)
    if indexed is not None:
        return indexed if indexed.room_id == room_id else None
    ts = await app[RELATIONS].store.latest_ts(event_id, room_id)
    return await app[EVENT_INDEX].newest_until(room_id, ts) if ts is not None else None


async def notify(app: web.Application, effect: Effect | None) -> None:
    """Tell the listeners (the socket fan-out) what the event changed, once per event: the
    same transaction handled twice (redelivered after a crash before it was recorded, or a
    process that lost the receiver lock finishing it while the standby handles the retry)
    finds it announced and tells nobody again. Claimed before telling: a crash in between
    loses the socket's update (a refetch shows it), never sends ``message_pinned`` twice."""
    if effect is None or not (effect.changed or effect.deleted):
        return
    if effect.event_id is not None and effect.rel_types:
        store = app[RELATIONS].store
        if not await store.claim_announcement(effect.event_id, effect.rel_types):
            return
    for listener in list(app[RELATIONS].listeners):
        try:
            await listener(effect)
        except Exception:
            log.exception("A relation listener failed")
