"""Keeps the timeline index current from appservice transactions."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from ..context import DISPATCHER, EVENT_INDEX
from .dispatcher import Event

log = logging.getLogger("bridge.matrix.indexer")

# Events that count as messages in a conversation.
INDEXED_TYPES = frozenset({"m.room.message", "m.sticker", "m.room.encrypted"})


def msgtype_of(content: dict) -> str | None:
    """A client can put anything in msgtype; only a string is worth indexing."""
    msgtype = content.get("msgtype")
    return msgtype if isinstance(msgtype, str) else None


def setup(app: web.Application) -> None:
    async def index_event(event: Event) -> None:
        if event.get("type") not in INDEXED_TYPES or "state_key" in event:
            return
        # Intake already dropped events whose content is not an object.
        content = event.get("content") or {}
        if not content:
            # A redacted event: nothing to show, nothing to count.
            return
        await app[EVENT_INDEX].add(
            event_id=event["event_id"],
            room_id=event["room_id"],
            sender=event["sender"],
            event_type=event["type"],
            msgtype=msgtype_of(content),
            origin_ts=int(event.get("origin_server_ts") or time.time() * 1000),
        )

    app[DISPATCHER].on_timeline(index_event)
