"""Keeps the timeline index and the relations index current from appservice transactions."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from ..context import DISPATCHER, EVENT_INDEX
from . import relations
from .dispatcher import Event
from .relations import is_timeline_message

log = logging.getLogger("bridge.matrix.indexer")

# Event types that can be messages in a conversation; relations.is_timeline_message says
# which events of these types are (edits and thread replies are not).
INDEXED_TYPES = relations.MESSAGE_TYPES


def msgtype_of(content: dict) -> str | None:
    """A client can put anything in msgtype; only a string is worth indexing."""
    msgtype = content.get("msgtype")
    return msgtype if isinstance(msgtype, str) else None


def setup(app: web.Application) -> None:
    relations.ensure(app)

    async def index_event(event: Event) -> None:
        effect = await relations.apply(app, event)
        if is_timeline_message(event):
            # Intake already dropped events whose content is not an object.
            content = event.get("content") or {}
            await app[EVENT_INDEX].add(
                event_id=event["event_id"],
                room_id=event["room_id"],
                sender=event["sender"],
                event_type=event["type"],
                msgtype=msgtype_of(content),
                origin_ts=int(event.get("origin_server_ts") or time.time() * 1000),
            )
        await relations.notify(app, effect)

    app[DISPATCHER].on_timeline(index_event)
