"""Power levels of DM rooms: both people may post and pin, neither may delete the other's
messages.

DMs used to be created with ``trusted_private_chat``, which gives the invitee the creator's
power (level 100; in room version 12 Synapse makes the invitee an additional creator), so
either could redact the other's messages. New DMs use ``private_chat`` (the invitee stays at
0) with pins open to everybody. Existing DMs are brought to that rule once, by the process
that holds the receiver lock (a duty: it moves with the lock), room by room until each is
done (a 5xx or a rate limit leaves the room for the next pass): every member above the
redact level who is not a creator lowers itself (a user may always lower their own level).
A creator's power in room version 12 is implicit and cannot be lowered: for those rooms,
and always, the facade's delete (``actions.delete``) refuses the other's messages in a DM
whatever the levels say. That is enough: a DM holds puppets only, and only the bridge can
act as a puppet (the appservice namespace is exclusive), so a creator's power there is the
bridge's, used only through the facade's rule. (Only the facade creates DMs: a guest in
one, where ``federation.direct_with_guests`` allows it, is an invitee at level 0.)
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from ..context import CONVERSATIONS, MATRIX, RECEIVER, ROOM_MEMBERS
from ..errors import HomeserverUnavailable
from ..matrix.homeserver import MatrixError

log = logging.getLogger("bridge.api.dm_levels")

# Bumped when the rule changes; rooms below it are checked again.
LEVELS_VERSION = 1
PINNED_EVENTS = "m.room.pinned_events"
# Synapse's own defaults for a new room's events map (it is replaced whole by an override).
_DEFAULT_EVENTS = {
    "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
    "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
    "m.room.server_acl": 100, "m.room.encryption": 100,
}  # fmt: skip


def creation_override() -> dict[str, Any]:
    """``power_level_content_override`` of a new DM (preset ``private_chat``)."""
    return {"events": {**_DEFAULT_EVENTS, PINNED_EVENTS: 0}, "redact": 100}


async def fix_room(app: web.Application, room_id: str) -> bool:
    """Bring one DM to the rule; True when it now follows it (or cannot be read at all)."""
    matrix = app[MATRIX]
    members = await app[ROOM_MEMBERS].of_room(room_id)
    ours = [m for m, membership in members.items() if membership == "join"]
    if not ours:
        return True  # nobody of ours left to act, nor to be wronged
    # The bot is not in DMs: read as a member.
    state = await matrix.get_state(room_id, as_user=ours[0])  # type: ignore[arg-type]
    creator, levels, joined = None, None, []
    creators: set[str] = set()
    for event in state:
        kind, content = event.get("type"), event.get("content") or {}
        if kind == "m.room.create":
            creator = event.get("sender")
            extra = content.get("additional_creators")
            creators = {creator, *(extra if isinstance(extra, list) else [])}
        elif kind == "m.room.power_levels" and event.get("state_key") == "":
            levels = content
        elif kind == "m.room.member" and content.get("membership") == "join":
            joined.append(event["state_key"])
    if levels is None:
        return True
    redact = int(levels.get("redact", 50))
    users = dict(levels.get("users") or {})
    too_high = [m for m, lvl in users.items() if m not in creators and int(lvl) >= redact]
    events = dict(levels.get("events") or {})
    pins_closed = int(events.get(PINNED_EVENTS, levels.get("state_default", 50))) > 0
    if not too_high and not pins_closed:
        return True
    # Each lowers itself, and opens pins while it still may.
    for mxid in too_high:
        if mxid not in joined:
            continue
        users[mxid] = 0
        events[PINNED_EVENTS] = 0
        await matrix.send_state(
            room_id,  # type: ignore[arg-type]
            "m.room.power_levels",
            {**levels, "users": users, "events": events},
            as_user=mxid,
        )
        levels = {**levels, "users": dict(users), "events": dict(events)}
        pins_closed = False
    if pins_closed and creator in joined:
        events[PINNED_EVENTS] = 0
        await matrix.send_state(
            room_id,  # type: ignore[arg-type]
            "m.room.power_levels",
            {**levels, "events": events},
            as_user=creator,
        )
    log.info("DM %s: power levels brought to the DM rule", room_id)
    return True


async def fix_all(app: web.Application) -> tuple[int, int]:
    """Every DM not yet at LEVELS_VERSION: how many were brought to it, and how many are
    left for a later pass (the homeserver failed there). Only a done room, or one that
    cannot be fixed (403: no member of ours may act; 404: gone), is marked."""
    store = app[CONVERSATIONS]
    checked, later = 0, set[str]()
    # Past the rooms left for later, so they never hide the others.
    while rooms := [
        room_id
        for room_id in await store.directs_below(LEVELS_VERSION, limit=500 + len(later))
        if room_id not in later
    ]:
        for room_id in rooms:
            try:
                await fix_room(app, room_id)
            except MatrixError as e:
                if e.status not in (403, 404):
                    log.warning("DM %s: power levels not fixed yet (%s); trying again", room_id, e)
                    later.add(room_id)
                    continue
                log.warning("Cannot fix the power levels of DM %s: %s", room_id, e)
            await store.set_levels_version(room_id, LEVELS_VERSION)
            checked += 1
    return checked, len(later)


async def run(app: web.Application, delay: float = 2.0) -> None:
    """The receiver's duty: passes until every DM is at the rule, backing off between them
    while the homeserver fails (a rate limit, a 5xx, an outage)."""
    while True:
        try:
            checked, later = await fix_all(app)
            if checked:
                log.info("Checked the power levels of %d DM(s)", checked)
            if not later:
                return
        except (HomeserverUnavailable, OSError) as e:
            log.info("DM power levels: homeserver not available (%s); retrying", e)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 60.0)


def setup(app: web.Application) -> None:
    # One process per deployment: the one holding the receiver lock (matrix/receiver.py);
    # a standby takes the duty over with the lock, and a facade never runs it.
    app[RECEIVER].duty("dm-levels", lambda: run(app))
