"""Keeps the facade's view current from appservice transactions, and backfills after downtime.

* message events: cached (memory only) for lastMessage, and the conversation's last
  activity moves forward;
* ``m.receipt``: a receipt at E means everything up to E is read, stored with E's sequence
  number so unread counts are one indexed query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..context import (
    CONFIG,
    CONVERSATIONS,
    DISPATCHER,
    EVENT_INDEX,
    IDS,
    MATRIX,
    RECEIPTS,
    ROOM_MEMBERS,
)
from ..db.relation import REPLACE, THREAD
from ..matrix.dispatcher import Event
from ..matrix.indexer import msgtype_of
from ..matrix.relations import (
    MESSAGE_TYPES,
    PINNED,
    Effect,
    is_timeline_message,
    read_position,
    rel_type_of,
    relations_in,
)
from ..matrix.relations import apply as apply_relations
from ..matrix.relations import ensure as ensure_relations
from . import CHAT
from .invalidation import invalidate
from .preview import preview_of, redacted

# A redacted last message whose preview was never recorded: nothing to show.
_EMPTY_PREVIEW = '{"sender":"","type":"m.room.message","ts":0,"content":{}}'

log = logging.getLogger("bridge.api.index")

BACKFILL_TASK = web.AppKey("backfill_task", asyncio.Task)
BACKFILL_LIMIT = 500


def _is_message(event: Event) -> bool:
    return is_timeline_message(event)


def _is_related_message(event: Event) -> bool:
    content = event.get("content")
    return (
        event.get("type") in MESSAGE_TYPES
        and "state_key" not in event
        and isinstance(content, dict)
        and rel_type_of(content) in (REPLACE, THREAD)
    )


def setup(app: web.Application) -> None:
    async def on_timeline(event: Event) -> None:
        if event.get("type") == "m.room.redaction":
            # A deleted message must not live on in any process's body cache, nor in the
            # conversation's preview (lastMessage, replays).
            redacts = event.get("redacts") or (event.get("content") or {}).get("redacts")
            if isinstance(redacts, str):
                await redact_preview(app, event["room_id"], redacts)
                await invalidate(app, redacts)
            return
        chat = app[CHAT]
        if not _is_message(event):
            if _is_related_message(event):
                # Edits and thread replies: bodies the message objects need, kept in memory.
                chat.events.put(event)
                url = (event.get("content") or {}).get("url")
                if isinstance(url, str) and url.startswith("mxc://"):
                    await chat.media.posted_in(url, event["room_id"])
            return
        chat.events.put(event)
        url = (event.get("content") or {}).get("url")
        if isinstance(url, str) and url.startswith("mxc://"):
            await chat.media.posted_in(url, event["room_id"])
        ts = int(event.get("origin_server_ts") or time.time() * 1000)
        await app[CONVERSATIONS].touch(event["room_id"], event["event_id"], ts, preview_of(event))
        # Only now that the index shows it may the in-memory stand-in go.
        if chat.pending.get(event["room_id"], ("",))[0] == event["event_id"]:
            del chat.pending[event["room_id"]]

    async def on_ephemeral(event: Event) -> None:
        if event.get("type") != "m.receipt" or not event.get("room_id"):
            return
        await store_receipts(app, event["room_id"], event.get("content") or {})

    async def on_relation(effect: Effect) -> None:
        if effect.redaction:
            for event_id in effect.changed:
                app[CHAT].events.drop(event_id)

    app[DISPATCHER].on_timeline(on_timeline)
    app[DISPATCHER].on_ephemeral(on_ephemeral)
    ensure_relations(app).listeners.append(on_relation)

    async def backfill_ctx(app: web.Application) -> AsyncIterator[None]:
        app[BACKFILL_TASK] = asyncio.create_task(backfill(app))
        yield
        app[BACKFILL_TASK].cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await app[BACKFILL_TASK]

    # Only the process that receives transactions indexes: facade processes read the index.
    if app[CONFIG]["appservice.receive_transactions"]:
        app.cleanup_ctx.append(backfill_ctx)


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
    for event_id, kinds in content.items():
        if not isinstance(kinds, dict):
            continue
        readers = kinds.get("m.read")
        if not isinstance(readers, dict):
            continue
        indexed = await read_position(app, room_id, event_id)
        if indexed is None:
            continue
        for mxid, data in readers.items():
            if isinstance(data, dict) and data.get("thread_id") not in (None, "main"):
                continue
            ts = data.get("ts") if isinstance(data, dict) else None
            ts = int(ts) if isinstance(ts, int | float) else int(time.time() * 1000)
            if await app[RECEIPTS].advance(room_id, mxid, indexed.event_id, indexed.seq, ts):
                moved += 1
    return moved


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
    missed: list[dict[str, Any]] = []
    # Edits, reactions, redactions and pins missed too (the relations index is idempotent).
    related: list[dict[str, Any]] = []
    token: str | None = None
    done = False
    while not done and len(missed) < limit:
        resp = await app[MATRIX].messages(
            room_id, direction="b", limit=50, from_token=token, as_user=reader
        )
        chunk = resp.get("chunk") or []
        known = await app[EVENT_INDEX].get_many([e["event_id"] for e in chunk])
        for event in chunk:
            if event["event_id"] in known:
                done = True
                break
            if _is_message(event):
                missed.append(event)
            elif (
                event.get("type") == "m.room.redaction"
                or relations_in(event)
                or (event.get("type") == PINNED and event.get("state_key") == "")
            ):
                related.append(event)
        token = resp.get("end")
        if not chunk or not token:
            break
    for event in reversed(missed):
        ts = int(event.get("origin_server_ts") or 0)
        await app[EVENT_INDEX].add(
            event["event_id"], room_id, event["sender"], event["type"],
            msgtype_of(event["content"]), ts,
        )  # fmt: skip
        await app[CONVERSATIONS].touch(room_id, event["event_id"], ts, preview_of(event))
        app[CHAT].events.put({**event, "room_id": room_id})
    for event in reversed(related):
        await apply_relations(app, {**event, "room_id": room_id})
    return len(missed)


async def backfill(app: web.Application) -> int:
    total = 0
    try:
        rows = await app[CONVERSATIONS].db.fetch("SELECT room_id FROM conversation")
        for row in rows:
            try:
                total += await backfill_room(app, row["room_id"])
            except Exception as e:
                log.warning("Backfill of %s failed: %s", row["room_id"], e)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("Backfill failed")
    if total:
        log.info("Backfilled %d messages missed while the bridge was down", total)
    return total
