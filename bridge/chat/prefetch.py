"""What a history page needs besides the homeserver's answer, read while the homeserver answers.

The first pages of a conversation are nearly always its newest messages, and the index knows
which those are: their relations, the room's receipts and pins, and the CRM users behind
them are read meanwhile, so that nothing waits on the database once the page arrives. What
the guess did not cover (a message the index does not hold yet, a quote further back, a
mentioned user) is looked up afterwards, exactly as without a prefetch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from ..context import EVENT_INDEX, RECEIPTS, USERS
from ..db.crm_user import CrmUser
from ..db.receipt import ReadMark
from ..db.relation import Relation
from ..db.room_event import RoomEvent
from ..matrix.relations import RELATIONS

# Index rows read beyond the page: events of the index a page does not show (encrypted ones)
# and messages that reached the index in a slightly different order than the homeserver's.
MARGIN = 20
# Past this many rows the guess is not worth its query (deep pages are read by cursor).
MAX_ROWS = 250


@dataclass(frozen=True)
class PagePrefetch:
    """The index's view of a room's newest events."""

    # Events whose relations ``relations`` holds in full.
    covered: frozenset[str]
    relations: list[Relation]
    pins: dict[str, list[str] | None]
    marks: list[ReadMark]
    # Every mxid in ``asked`` that belongs to a CRM user (puppet or linked account).
    users: dict[str, CrmUser]
    asked: frozenset[str]
    # The rows themselves, newest first (the newest page's messages still in flight).
    rows: tuple[RoomEvent, ...] = ()


def rows_for(skip: int, limit: int) -> int | None:
    """How many of the newest index rows cover page ``skip..skip+limit`` (None: not worth it)."""
    rows = skip + limit + 1 + MARGIN
    return rows if rows <= MAX_ROWS else None


async def newest(app: web.Application, room_id: str, rows: int) -> PagePrefetch:
    index, relations = app[EVENT_INDEX], app[RELATIONS]

    events: list[RoomEvent] = []

    async def newest_relations() -> tuple[list[str], set[str], list[Relation]]:
        events.extend(await index.newest(room_id, rows))
        ids = [e.event_id for e in events]
        return ids, {e.sender for e in events}, await relations.store.about(ids)

    (ids, senders, found), marks, pins = await asyncio.gather(
        newest_relations(), app[RECEIPTS].marks([room_id]), relations.pins_of([room_id])
    )
    asked = senders | {r.sender for r in found} | {m.mxid for m in marks}
    users = await app[USERS].get_by_mxids(sorted(asked))
    return PagePrefetch(frozenset(ids), found, pins, marks, users, frozenset(asked), tuple(events))
