"""The real-time side: the seed's Socket.IO events, fed by Matrix, across processes.

* server.py    the Socket.IO server on the aiohttp app, Redis-backed across processes
* handlers.py  connect (JWT), join/leave, send_message, typing, mark_as_read
* access.py    access that ends while a socket is open (removal, deactivation, expiry);
               manager.py carries it between processes and gates every delivery
* typing.py    at most one typing write per user and room per interval
* log.py       the delivery log: messages announced by seq past a durable mark, and
               delivered by every process to its sockets once per seq, gaps from the index
* fanout.py    room events → the log, message_update / message_deleted, conversation_update
* ephemeral.py m.typing / m.receipt / m.presence → user_typing, messages_read, user_online...
* presence.py  first socket → online, last socket + grace → offline
* registry.py  every user's sockets across processes; local.py, this process's
* pump.py      lanes: ordered per conversation, bounded, a dropped job → ``resync``
* rooms.py     helpers
* manager.py   the gate at delivery and the control messages, over either manager
* transport.py the Redis manager: pipelined outbox, resubscribing and resyncing after an
               outage (../redis_state.py tells every Redis user whether Redis answers now)
* crm_rooms.py the CRM's own rooms (join_room/leave_room) and POST /api/admin/v1/events
* emit.py      events the facade's service functions send themselves (chat_cleared)
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from ..context import CONFIG, DISPATCHER, LOCAL_ECHO, RECEIVER, REDIS_STATE
from ..matrix.dispatcher import Event
from ..matrix.relations import Effect, is_timeline_message
from ..matrix.relations import ensure as ensure_relations
from ..metrics import METRICS
from ..redis_state import RedisState
from . import crm_rooms, handlers
from .access import Access
from .fanout import is_conversation_change
from .local import LocalSockets
from .server import attach, create_server
from .service import ACCESS, PRESENCE, REALTIME, SIO, TYPING, Realtime, context

log = logging.getLogger("bridge.realtime")

# Shutdown: seconds for the lanes to emit what the transactions brought (then resync).
DRAIN_S = 3.0
# Seconds between two looks for messages indexed and never announced (the 2 s bound).
GAP_INTERVAL = 1.0
# After the first look, conversations with a message in this window (ms) are looked at.
RECENT_MS = 10 * 60 * 1000

__all__ = ["ACCESS", "PRESENCE", "REALTIME", "SIO", "TYPING", "Realtime", "setup"]


def setup(app: web.Application) -> None:
    """Attach Socket.IO at /socket.io/, the Matrix event handlers and the local echo."""
    state = RedisState() if app[CONFIG].get("redis.url") else None
    if state is not None:
        app[REDIS_STATE] = state
    sio = create_server(app[CONFIG], state)
    websockets = attach(app, sio)
    app[SIO] = sio
    sockets = LocalSockets()
    if (metrics := app.get(METRICS)) is not None:
        metrics.sockets.set_function(sockets.__len__)  # read at scrape time: no hot-path cost
    access = Access(app, sio, sockets)
    sio.manager.gate = access
    app[ACCESS] = access
    handlers.register(app, sio, sockets, access, PRESENCE, TYPING)
    app.add_routes(crm_rooms.admin_routes(sio))
    app.cleanup_ctx.append(context(app))

    async def shut_down(app: web.Application) -> None:
        # Within the drain bound (docs/realtime.md): what the transactions brought goes out
        # to sockets (here and elsewhere) first, then this process's sockets are cut.
        if REALTIME in app:
            await app[REALTIME].close(timeout=DRAIN_S)
        await handlers.close_all(sio, timeout=1.0)
        websockets.close_all()

    app.on_shutdown.append(shut_down)

    async def local_echo(conversation: Any, message: dict, seq: int, fresh: bool) -> None:
        if REALTIME in app:
            await app[REALTIME].fanout.local_echo(conversation, message, seq, fresh)

    app[LOCAL_ECHO].append(local_echo)

    async def on_timeline(event: Event) -> None:
        if REALTIME not in app:
            return
        realtime = app[REALTIME]
        room_id = event["room_id"]
        if is_timeline_message(event):
            realtime.live.submit(room_id, lambda: realtime.fanout.message_event(event))
        elif is_conversation_change(event):
            if event.get("type") == "m.room.member":
                # The directory side has already recorded the membership (crm/drift.py).
                realtime.live.submit(room_id, lambda: realtime.fanout.membership(event))
            realtime.fanout.schedule_change(room_id, realtime.slow)

    async def on_ephemeral(event: Event) -> None:
        if REALTIME not in app:
            return
        realtime = app[REALTIME]
        kind = event.get("type")
        room_id = str(event.get("room_id") or "")
        if kind == "m.typing":
            realtime.live.submit(room_id, lambda: realtime.relays.typing(event))
        elif kind == "m.receipt":
            realtime.live.submit(room_id, lambda: realtime.relays.receipt(event, realtime.slow))
        elif kind == "m.presence":
            connected = realtime.registry.connected
            key = f"presence:{event.get('sender')}"
            realtime.live.submit(key, lambda: realtime.relays.presence(event, connected))

    async def on_relation(effect: Effect) -> None:
        if REALTIME not in app:
            return
        realtime = app[REALTIME]
        fanout, room_id = realtime.fanout, effect.room_id
        if effect.deleted:
            deleted = list(effect.deleted)
            realtime.live.submit(
                room_id, lambda: fanout.messages_deleted(room_id, deleted, realtime.slow)
            )
        if (effect.pinned or effect.unpinned) and effect.by:
            pins = (list(effect.pinned), list(effect.unpinned), effect.by, effect.at)
            realtime.live.submit(room_id, lambda: fanout.pins_changed(room_id, *pins))
        if effect.changed:
            changed = list(effect.changed)
            realtime.live.submit(
                room_id, lambda: fanout.messages_changed(room_id, changed, realtime.slow)
            )

    app[DISPATCHER].on_timeline(on_timeline)
    app[DISPATCHER].on_ephemeral(on_ephemeral)
    ensure_relations(app).listeners.append(on_relation)
    # While this process holds the receiver lock (matrix/receiver.py): from each takeover on.
    app[RECEIVER].duty("delivery-gaps", lambda: announce_gaps(app))


async def announce_gaps(app: web.Application) -> None:
    """The process that receives transactions announces what no one did: when it becomes
    the receiver (a process died between index and announcement, a backfill indexed), after
    a Redis outage and after a database error, then every ``GAP_INTERVAL`` seconds."""
    # Every conversation once (on start, after an outage), then those active lately.
    since = 0
    while True:
        realtime = app.get(REALTIME)
        state = app.get(REDIS_STATE)
        if realtime is not None and (state is None or state.up):
            started = int(time.time() * 1000) - RECENT_MS
            try:
                await realtime.log.recover(since)
                since = started
            except Exception as e:
                if since:
                    log.warning("Could not look for unannounced messages (%r); retrying", e)
                since = 0
        elif since:
            since = 0  # Redis away: announcements may be lost; all rooms once it is back
        await asyncio.sleep(GAP_INTERVAL)
