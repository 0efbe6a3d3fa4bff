"""Relations on message objects: edits, replies, mentions, reactions, threads and pins.

Everything for a page comes from one query of the relations index plus the room's cached
pins; bodies (of an edit, of a quoted message) come from Synapse's bundled aggregations or
the event cache, and only on a miss from the homeserver. Never one /relations call per
message.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from ..context import MATRIX, USERS
from ..db.crm_user import CrmUser
from ..db.relation import ANNOTATION, REPLACE, THREAD, Relation
from ..ids import message_id_for_event
from ..matrix.homeserver import MatrixError
from ..matrix.relations import PINNED, RELATIONS, reply_target
from . import serialize
from .prefetch import PagePrefetch


class Reader(Protocol):
    """What decorating needs of the read model (``ChatService``)."""

    app: web.Application

    async def fetch_event(
        self, room_id: str, event_id: str, as_user: str
    ) -> dict[str, Any] | None: ...

    async def sender_objects(self, mxids: set[str]) -> dict[str, dict[str, Any]]: ...


# One message: (room id, event, its message object).
Item = tuple[str, dict[str, Any], dict[str, Any]]


def _newer(a: tuple[int, str], b: tuple[int, str]) -> bool:
    """The spec's order of edits: origin_server_ts, then event id."""
    return a > b


def _bundled_edit(event: dict[str, Any]) -> dict[str, Any] | None:
    unsigned = event.get("unsigned")
    rels = unsigned.get("m.relations") if isinstance(unsigned, dict) else None
    edit = rels.get(REPLACE) if isinstance(rels, dict) else None
    ok = isinstance(edit, dict) and isinstance(edit.get("event_id"), str)
    return edit if ok and isinstance(edit.get("content"), dict) else None


def new_content(edit: dict[str, Any] | None) -> dict[str, Any] | None:
    content = edit.get("content") if isinstance(edit, dict) else None
    new = content.get("m.new_content") if isinstance(content, dict) else None
    return new if isinstance(new, dict) else None


async def pins_for(service: Reader, room_id: str, reader: str | None) -> list[str]:
    """The room's pinned event ids, oldest pin first; asked of Synapse once if unknown."""
    relations = service.app[RELATIONS]
    pins = (await relations.pins_of([room_id]))[room_id]
    if pins is not None or reader is None:
        return pins or []
    try:
        state = await service.app[MATRIX].get_state_event(room_id, PINNED, as_user=reader)
    except MatrixError:
        return []
    listed = (state or {}).get("pinned")
    pins = [p for p in listed if isinstance(p, str)] if isinstance(listed, list) else []
    await relations.set_pins(room_id, pins)
    return pins


@dataclass
class Indexed:
    """What the relations index holds about a page: its relations and its rooms' pins."""

    rows: list[Relation]
    pins: dict[str, list[str] | None]


def _replies(events: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, str]:
    return {
        event_id: target
        for event_id, (_, event) in events.items()
        if (target := reply_target(event.get("content") or {}))
    }


async def indexed(
    service: Reader,
    events: list[tuple[str, dict[str, Any]]],
    replies: dict[str, str] | None = None,
    prefetch: PagePrefetch | None = None,
) -> Indexed:
    """The index's rows for these (room id, event) pairs, in one round of queries; a caller
    starts it beside its own lookups and hands it to :func:`decorate`. ``replies``: what
    the events quote, if the caller knows it already; ``prefetch``: what was read before the
    events were known (only what it does not cover is asked for)."""
    by_id = {event["event_id"]: (room_id, event) for room_id, event in events}
    if replies is None:
        replies = _replies(by_id)
    targets = set(by_id) | set(replies.values())
    rooms = sorted({room_id for room_id, _ in events})
    relations = service.app[RELATIONS]
    known: list[Relation] = []
    pins: dict[str, list[str] | None] = {}
    if prefetch is not None:
        known = [r for r in prefetch.relations if r.target in targets]
        targets -= prefetch.covered
        pins = {r: prefetch.pins[r] for r in rooms if prefetch.pins.get(r) is not None}
    rooms = [r for r in rooms if r not in pins]
    if prefetch is not None:  # in turn: usually neither needs the database
        rows = await relations.store.about(sorted(targets))
        more_pins = await relations.pins_of(rooms)
    else:
        rows, more_pins = await asyncio.gather(
            relations.store.about(sorted(targets)), relations.pins_of(rooms)
        )
    return Indexed(known + rows, {**pins, **more_pins})


async def decorate(
    service: Reader,
    items: list[Item],
    viewer: CrmUser | None,
    reader: str | Callable[[], Awaitable[str]] | None,
    *,
    fetch_pins: bool = True,
    known: dict[str, CrmUser] | None = None,
    asked: frozenset[str] = frozenset(),
    prefetched: Indexed | None = None,
) -> None:
    """Fill the relation fields of message objects in place.

    ``reader`` is an account that may read the rooms (for cache misses); ``viewer`` decides
    ``me`` on reactions (socket payloads go to many people: ``me`` is false there);
    ``known``: CRM users by mxid the caller already loaded (of every mxid in ``asked``,
    those that are CRM users); ``prefetched``: what
    :func:`indexed` returned for the same items.
    """
    if not items:
        return
    resolved: list[str | None] = []

    async def who() -> str | None:
        """The reader, looked up only on a cache miss (fan-out has no requesting user)."""
        if not resolved:
            resolved.append(reader if not callable(reader) else await reader())
        return resolved[0]

    events = {event["event_id"]: (room_id, event) for room_id, event, _ in items}
    replies = _replies(events)
    found = prefetched or await indexed(
        service, [(room_id, event) for room_id, event, _ in items], replies
    )
    rows, pins = found.rows, dict(found.pins)
    if fetch_pins:
        for room_id in pins:
            if pins[room_id] is None:
                pins[room_id] = await pins_for(service, room_id, await who())
    pinned = {p for room_pins in pins.values() for p in room_pins or []}

    edits: dict[str, list[Relation]] = defaultdict(list)
    reactions: dict[str, dict[str, list[str]]] = defaultdict(dict)
    threads: dict[str, list[int]] = defaultdict(list)
    for rel in sorted(rows, key=lambda r: (r.origin_ts, r.event_id)):
        if rel.rel_type == REPLACE:
            edits[rel.target].append(rel)
        elif rel.rel_type == ANNOTATION and rel.key is not None:
            senders = reactions[rel.target].setdefault(rel.key, [])
            if rel.sender not in senders:
                senders.append(rel.sender)
        elif rel.rel_type == THREAD:
            threads[rel.target].append(rel.origin_ts)

    async def fetch(room_id: str, event_id: str) -> dict[str, Any] | None:
        return await service.fetch_event(
            room_id, event_id, await who() or service.app[MATRIX].bot_mxid
        )

    # Quoted messages, from the cache or the homeserver.
    quoted: dict[str, dict[str, Any] | None] = {
        t: events[t][1] for t in replies.values() if t in events
    }
    missing = [t for t in set(replies.values()) if t not in quoted]
    room_of_reply = {t: events[e][0] for e, t in replies.items()}
    for target, got in zip(
        missing, await asyncio.gather(*(fetch(room_of_reply[t], t) for t in missing)), strict=True
    ):
        quoted[target] = got if got and got.get("content") else None

    # The latest valid edit (same sender as the original) of each message and quote.
    originals = {
        **{e: ev for e, (_, ev) in events.items()},
        **{k: v for k, v in quoted.items() if v},
    }
    latest: dict[str, tuple[int, str, dict[str, Any] | None]] = {}
    for target, original in originals.items():
        best: tuple[int, str, dict[str, Any] | None] | None = None
        for rel in edits.get(target, []):
            if rel.sender == original.get("sender") and (
                best is None or _newer((rel.origin_ts, rel.event_id), best[:2])
            ):
                best = (rel.origin_ts, rel.event_id, None)
        bundled = _bundled_edit(original)
        if bundled and bundled.get("sender") == original.get("sender"):
            key = (int(bundled.get("origin_server_ts") or 0), bundled["event_id"])
            if best is None or not _newer(best[:2], key):
                best = (*key, bundled)
        if best is not None:
            latest[target] = best
    to_fetch = [t for t, (_, _, ev) in latest.items() if ev is None]
    room_of = {**room_of_reply, **{e: r for e, (r, _) in events.items()}}
    fetched = await asyncio.gather(*(fetch(room_of[t], latest[t][1]) for t in to_fetch))
    for target, edit in zip(to_fetch, fetched, strict=True):
        ts, event_id, _ = latest[target]
        latest[target] = (ts, event_id, edit if new_content(edit) else None)

    # CRM ids of reaction senders and mentioned users (an edit's own list wins); quotes'
    # sender objects.
    mention_lists = {
        e: _mentioned(new_content(latest[e][2]) if e in latest and latest[e][2] else None, ev)
        for e, (_, ev) in events.items()
    }
    mxids = {m for ms in mention_lists.values() for m in ms}
    mxids |= {s for keys in reactions.values() for users in keys.values() for s in users}
    quote_mxids = {q["sender"] for q in quoted.values() if q and isinstance(q.get("sender"), str)}
    users = dict(known or {})
    missing_users = sorted((mxids | quote_mxids) - set(users) - asked)
    if missing_users:
        users.update(await service.app[USERS].get_by_mxids(missing_users))
    quote_senders = {m: serialize.user_object(users[m]) for m in quote_mxids if m in users}
    quote_senders.update(await service.sender_objects(quote_mxids - set(quote_senders)))
    mine = set(viewer.mxids) if viewer else set()

    def person(mxid: str) -> str:
        return users[mxid].crm_user_id if mxid in users else mxid

    def text_of(event: dict[str, Any]) -> str:
        edit = latest.get(event["event_id"])
        content = new_content(edit[2]) if edit else None
        return serialize.type_and_text(
            event.get("type", ""), content or event.get("content") or {}, event["sender"] in users
        )[1]

    for _, event, message in items:
        event_id = event["event_id"]
        edit = latest.get(event_id)
        if edit and (content := new_content(edit[2])):
            trusted = not str(message["sender"].get("_id", "@")).startswith("@")
            text = serialize.type_and_text(event.get("type", ""), content, trusted)[1]
            if not _sets_durations_only(edit[2]) or text != message["content"]:
                message["edited"] = True
                message["editedAt"] = message["updatedAt"] = serialize.iso(edit[0])
            message["content"] = text
            # A voice note's duration, set after it was sent (api/voice.py), lives here.
            message["attachments"] = (
                serialize.attachments_of(content, trusted) or message["attachments"]
            )
        if target := replies.get(event_id):
            quote = quoted.get(target)
            message["replyTo"] = {
                "_id": message_id_for_event(target),
                "content": text_of(quote) if quote else None,
                "sender": quote_senders.get(quote["sender"]) if quote else None,
            }
        # map, not a generator expression: a listing decorates one message per conversation.
        message["mentions"] = list(dict.fromkeys(map(person, mention_lists[event_id])))
        message["reactions"] = [
            {
                "key": key,
                "count": len(senders),
                "users": list(dict.fromkeys(map(person, senders))),
                "me": bool(mine & set(senders)),
            }
            for key, senders in reactions.get(event_id, {}).items()
        ]
        if replies_ts := threads.get(event_id):
            message["threadCount"] = len(replies_ts)
            message["threadLastReplyAt"] = serialize.iso(max(replies_ts))
        message["isPinned"] = event_id in pinned


def _sets_durations_only(edit: dict[str, Any] | None) -> bool:
    crm = (edit or {}).get("content", {}).get(serialize.CRM_FIELD)
    return isinstance(crm, dict) and crm.get("edit") == "duration"


def _mentioned(edited: dict[str, Any] | None, event: dict[str, Any]) -> list[str]:
    content = edited or event.get("content") or {}
    mentions = content.get("m.mentions")
    ids = mentions.get("user_ids") if isinstance(mentions, dict) else None
    if not isinstance(ids, list):
        return []
    return [m for m in ids[:100] if isinstance(m, str) and m.startswith("@")]
