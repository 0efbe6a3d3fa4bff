"""The one indexer of the read model: ``room_event``, receipts and conversation activity.

Every way an event reaches the bridge goes through ``index_event``: an appservice
transaction, the facade's own send (at once, before the answer), a history page that met an
event still on its way, and the backfill after downtime. It is idempotent, so the
transaction that brings back a message the facade already indexed changes nothing but the
timestamps the homeserver decided.

* a message of the timeline: its live order (``seq``) and its timeline position (``pos``,
  final when a transaction or backfill brought it, provisional from the send path), the
  conversation's last message and preview, its body in the process's cache, the media it
  posted;
* an edit or a thread reply: its body in the cache, its relations;
* a redaction: the relations index, the preview, every process's body cache;
* ``m.receipt``: a receipt at E means everything up to E is read in the room's timeline,
  stored with E's position so unread counts are one indexed query.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from ..context import (
    CONVERSATIONS,
    DISPATCHER,
    EVENT_INDEX,
    IDS,
    MATRIX,
    RECEIPTS,
    RECEIVER,
    ROOM_MEMBERS,
)
from ..db.relation import REPLACE, THREAD
from ..db.room_event import BACKFILL, TRANSACTION, Arrival, RoomEvent
from ..matrix import relations
from ..matrix.dispatcher import Event
from ..matrix.early_receipts import EarlyReceipts
from ..matrix.relations import (
    MESSAGE_TYPES,
    PINNED,
    Effect,
    is_timeline_message,
    msgtype_of,
    read_position,
    redacted_id,
    rel_type_of,
    relations_in,
)
from .events import read_receipts
from .invalidation import invalidate
from .preview import preview_of, redacted
from .service import CHAT

# A redacted last message whose preview was never recorded: nothing to show.
_EMPTY_PREVIEW = '{"sender":"","type":"m.room.message","ts":0,"content":{}}'

log = logging.getLogger("bridge.chat.indexer")

BACKFILL_LIMIT = 500


def _is_related_message(event: Event) -> bool:
    content = event.get("content")
    return (
        event.get("type") in MESSAGE_TYPES
        and "state_key" not in event
        and isinstance(content, dict)
        and rel_type_of(content) in (REPLACE, THREAD)
    )


async def index_event(
    app: web.Application,
    event: Event,
    *,
    notify: bool = True,
    made_here: bool = False,
    arrival: Arrival = TRANSACTION,
) -> RoomEvent | None:
    """Index one timeline event (``room_id`` set); the message's index row, if a message.

    ``notify``: tell the relation listeners (the real-time fan-out) what changed; only the
    transaction's call does, so a change is announced once, when the homeserver has it.
    ``made_here``: the send path's own copy of the event, which must not replace the
    homeserver's in the body cache should the transaction bring it back meanwhile.
    ``arrival``: TRANSACTION, BACKFILL or SENT (db/room_event.py), its timeline position:
    final from the homeserver's order, provisional from anywhere else."""
    effect = await relations.apply(app, event)
    indexed: RoomEvent | None = None
    room_id = event["room_id"]
    if event.get("type") == "m.room.redaction":
        # A deleted message must not live on in any process's body cache, nor in the
        # conversation's preview (lastMessage, replays).
        if (target := redacted_id(event)) is not None:
            await redact_preview(app, room_id, target)
            await invalidate(app, target)
    elif is_timeline_message(event):
        content = event.get("content") or {}
        ts = int(event.get("origin_server_ts") or time.time() * 1000)
        preview = preview_of(event)
        indexed, new = await app[EVENT_INDEX].add(
            event["event_id"], room_id, event["sender"], event["type"], msgtype_of(content), ts,
            touch_preview=preview, arrival=arrival,
        )  # fmt: skip
        await _keep_body(app, event, made_here)
        if not new:  # a new row touched its conversation as it was written
            await app[CONVERSATIONS].touch(room_id, event["event_id"], ts, preview)
    elif _is_related_message(event):
        # Edits and thread replies: bodies the message objects need, kept in memory.
        await _keep_body(app, event, made_here)
    if notify:
        await relations.notify(app, effect)
    return indexed


async def _keep_body(app: web.Application, event: Event, made_here: bool = False) -> None:
    if CHAT in app:
        app[CHAT].events.put(event, made_here=made_here)
    url = (event.get("content") or {}).get("url")
    if isinstance(url, str) and url.startswith("mxc://") and CHAT in app:
        await app[CHAT].media.posted_in(url, event["room_id"])


async def redact_preview(app: web.Application, room_id: str, event_id: str) -> None:
    """The conversation's preview loses the content of its message when that is redacted."""
    conversation = await app[CONVERSATIONS].get_by_room(room_id)
    if conversation is not None and conversation.last_event_id == event_id:
        await app[CONVERSATIONS].set_preview(
            room_id, event_id, redacted(conversation.last_preview) or _EMPTY_PREVIEW
        )


async def store_receipts(app: web.Application, room_id: str, content: dict[str, Any]) -> int:
    """Apply an m.receipt's content; receipts at events we never indexed are skipped."""
    moved = 0
    for receipt in read_receipts(content):
        indexed = await read_position(app, room_id, receipt.event_id)
        if indexed is None:
            continue
        ts = receipt.ts if receipt.ts is not None else int(time.time() * 1000)
        if await app[RECEIPTS].advance(room_id, receipt.mxid, indexed.event_id, indexed.pos, ts):
            moved += 1
    return moved


def setup(app: web.Application) -> None:
    relations.ensure(app)

    async def on_timeline(event: Event) -> None:
        await index_event(app, event)

    async def on_ephemeral(event: Event) -> None:
        if event.get("type") != "m.receipt" or not event.get("room_id"):
            return
        content = event.get("content")
        await store_receipts(app, event["room_id"], content if isinstance(content, dict) else {})

    async def on_relation(effect: Effect) -> None:
        if effect.redaction and CHAT in app:
            for event_id in effect.changed:
                app[CHAT].events.drop(event_id)

    app[DISPATCHER].on_timeline(on_timeline)
    app[DISPATCHER].on_ephemeral(on_ephemeral)

    async def known(room_id: str, event_id: str) -> bool:
        return await read_position(app, room_id, event_id) is not None

    app[DISPATCHER].hold_early_receipts(EarlyReceipts(known))
    relations.ensure(app).listeners.append(on_relation)

    # Only the receiver indexes (facade processes read the index): at start, and again on
    # each takeover, for what arrived while no process received.
    app[RECEIVER].duty("backfill", lambda: backfill(app))


async def _reader_for(app: web.Application, room_id: str) -> str | None:
    """A joined account of ours that can read the room's history."""
    members = await app[ROOM_MEMBERS].of_room(room_id)
    bot = app[IDS].bot_mxid
    if members.get(bot) == "join":
        return bot
    for mxid, membership in members.items():
        if membership == "join" and app[IDS].crm_user_id_of(mxid) is not None:
            return mxid
    return None


async def backfill_room(app: web.Application, room_id: str, limit: int = BACKFILL_LIMIT) -> int:
    """Index the messages of a room we missed while down (newest back to a known one)."""
    reader = await _reader_for(app, room_id)
    if reader is None:
        return 0
    # Messages, and the edits, reactions, redactions and pins missed with them, newest first.
    missed: list[dict[str, Any]] = []
    messages = 0
    token: str | None = None
    done = False
    while not done and messages < limit:
        resp = await app[MATRIX].messages(
            room_id, direction="b", limit=50, from_token=token, as_user=reader
        )
        chunk = resp.get("chunk") or []
        known = await app[EVENT_INDEX].get_many([e["event_id"] for e in chunk])
        for event in chunk:
            if event["event_id"] in known:
                done = True
                break
            if is_timeline_message(event):
                missed.append(event)
                messages += 1
            elif (
                event.get("type") == "m.room.redaction"
                or relations_in(event)
                or (event.get("type") == PINNED and event.get("state_key") == "")
            ):
                missed.append(event)
        token = resp.get("end")
        if not chunk or not token:
            break
    for event in reversed(missed):
        await index_event(app, {**event, "room_id": room_id}, notify=False, arrival=BACKFILL)
    return messages


async def backfill(app: web.Application) -> int:
    total = 0
    try:
        for room_id in await app[CONVERSATIONS].room_ids():
            try:
                total += await backfill_room(app, room_id)
            except Exception as e:
                log.warning("Backfill of %s failed: %s", room_id, e)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("Backfill failed")
    if total:
        log.info("Backfilled %d messages missed while the bridge was down", total)
    return total
