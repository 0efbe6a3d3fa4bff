"""Open sockets keep only the access their user still has, in every process, at once.

A socket is authorised at connect, but access can end while it is open:

* removed from a conversation (the directory kicks the puppet, or a leave arrives from
  Matrix): every process takes the user's sockets out of the conversation's room;
* moved to another company by the directory: every process takes the user's sockets out
  of the old ``company_<id>`` room (``join_room`` reads the user afresh, so it cannot be
  joined again);
* deactivated: every process sends ``error {errcode: M_USER_DEACTIVATED}`` to the user's
  sockets and closes them (connecting again is refused);
* the token expires: ``error {errcode: M_UNKNOWN_TOKEN}``, then the socket closes, so the
  frontend reconnects with a fresh token.

The first two are control messages on the Socket.IO manager's channel (manager.py). The
gate also checks, at delivery, that a conversation's events reach only its participants
(``room_member``, the rule REST applies), so a stale room membership cannot leak.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import socketio
from aiohttp import web

from ..api.auth import SEEN_USERS
from ..chat.media_urls import has_media, media_signer
from ..context import CONVERSATIONS, ROOM_MEMBERS, USERS
from ..ids import room_id_for_conversation
from .crm_rooms import company_room
from .local import LocalSockets
from .manager import CONTROL_EVENT, CONTROL_ROOM
from .rooms import conversation_of_room, conversation_room, is_conversation_room

log = logging.getLogger("bridge.realtime.access")

DEACTIVATED = {"message": "This account is deactivated", "errcode": "M_USER_DEACTIVATED"}
EXPIRED = {"message": "The access token has expired", "errcode": "M_UNKNOWN_TOKEN"}

# Who is joined to a room, as the gate last read it. A user found there is let through for
# this long; one not found is looked up again before being held back.
_JOINED_TTL = 2.0
_JOINED_CACHE = 10000
# Events whose payload may carry media URLs (attachments, avatars): each socket gets them
# signed for its own user. Every outgoing event whose model holds a User or a Message is here
# (tests/test_personal_events.py checks it against api/contract.py).
PERSONAL_EVENTS = frozenset(
    {"new_message", "message_update", "message_sent", "conversation_update", "message_pinned",
     "message_unpinned", "user_online", "user_typing"}
)  # fmt: skip


class Access:
    def __init__(self, app: web.Application, sio: socketio.AsyncServer, sockets: LocalSockets):
        self.app = app
        self.sio = sio
        self.sockets = sockets
        # Room -> (when read, joined mxids): capped at _JOINED_CACHE (emptied past it), and
        # an entry is dropped when its room's membership changes.
        self._joined: dict[str, tuple[float, frozenset[str]]] = {}
        self.held_back = 0  # deliveries the gate refused (stale room memberships)
        # Sockets held back and looked at again after _JOINED_TTL (at most one per socket
        # and room; each goes when its look is done).
        self._rechecks: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # Announced to every process.
    async def revoke(self, crm_user_id: str, conversation_id: str) -> None:
        payload = {"kind": "revoke", "user": crm_user_id, "conversation": conversation_id}
        await self.sio.emit(CONTROL_EVENT, payload, to=CONTROL_ROOM)

    async def deactivate(self, crm_user_id: str) -> None:
        await self.sio.emit(
            CONTROL_EVENT, {"kind": "deactivate", "user": crm_user_id}, to=CONTROL_ROOM
        )

    async def company_left(self, crm_user_id: str, company_id: str) -> None:
        """The directory moved the user out of a company: their sockets leave its room."""
        payload = {"kind": "company", "user": crm_user_id, "company": company_id}
        await self.sio.emit(CONTROL_EVENT, payload, to=CONTROL_ROOM)

    async def member_left(self, room_id: str, mxid: str) -> None:
        """The directory took ``mxid`` out of a room, or Matrix says it left."""
        conversation = await self.app[CONVERSATIONS].get_by_room(room_id)
        user = await self.app[USERS].get_by_mxid(mxid)
        # Only the puppet's membership makes a CRM user take part (a linked account's does not).
        if conversation is None or user is None or user.mxid != mxid:
            return
        await self.revoke(user.crm_user_id, conversation.conversation_id)

    # In each process.
    async def control(self, payload: dict[str, Any]) -> None:
        kind, crm_user_id = payload.get("kind"), payload.get("user")
        if not isinstance(crm_user_id, str):
            return
        if kind == "revoke" and isinstance(conversation_id := payload.get("conversation"), str):
            room_id = room_id_for_conversation(conversation_id)
            if room_id is not None:
                self._joined.pop(room_id, None)
            room = conversation_room(conversation_id)
            for sid in self.sockets.of_user(crm_user_id):
                await self.sio.leave_room(sid, room)
        elif kind == "company" and isinstance(company_id := payload.get("company"), str):
            self.app.get(SEEN_USERS, {}).pop(crm_user_id, None)
            for sid in self.sockets.of_user(crm_user_id):
                await self.sio.leave_room(sid, company_room(company_id))
        elif kind == "deactivate":
            self.app.get(SEEN_USERS, {}).pop(crm_user_id, None)
            for sid in self.sockets.of_user(crm_user_id):
                await self.close(sid, DEACTIVATED)

    async def close(self, sid: str, body: dict[str, str]) -> None:
        """Tell a socket of this process why, then close it (or refuse it, if connecting)."""
        socket = self.sockets.get(sid)
        if socket is not None:
            socket.refused = body
        await self.sio.emit("error", body, to=sid, ignore_queue=True)
        await self.sio.disconnect(sid, ignore_queue=True)

    # The gate.
    async def _joined_to(self, room_id: str, fresh: bool) -> frozenset[str]:
        hit = None if fresh else self._joined.get(room_id)
        if hit is not None and time.monotonic() - hit[0] < _JOINED_TTL:
            return hit[1]
        members = await self.app[ROOM_MEMBERS].of_room(room_id)
        joined = frozenset(m for m, membership in members.items() if membership == "join")
        if len(self._joined) > _JOINED_CACHE:
            self._joined.clear()
        self._joined[room_id] = (time.monotonic(), joined)
        return joined

    def forget(self, room_id: str) -> None:
        """Membership of the room changed: the gate reads it again."""
        self._joined.pop(room_id, None)

    async def _participating(self, room: str, sids: set[str]) -> set[str]:
        room_id = room_id_for_conversation(conversation_of_room(room))
        if room_id is None:
            return set()
        users = {sid: socket.user for sid in sids if (socket := self.sockets.get(sid))}
        joined = await self._joined_to(room_id, fresh=False)
        allowed = {sid for sid, user in users.items() if user.mxid in joined}
        if len(allowed) == len(sids):
            return allowed
        joined = await self._joined_to(room_id, fresh=True)
        allowed = {sid for sid, user in users.items() if user.mxid in joined}
        for sid in sids - allowed:
            self.held_back += 1
            if (sid, room) not in self._rechecks:
                # One read is not enough to take a socket out: room_member can lag the
                # homeserver for a moment (a receiver restarting, a repair rewriting it),
                # and out of the room the socket would miss every later event in silence.
                self._rechecks.add((sid, room))
                asyncio.get_running_loop().call_later(
                    _JOINED_TTL, self._recheck_later, sid, room, room_id
                )
        return allowed

    def _recheck_later(self, sid: str, room: str, room_id: str) -> None:
        task = asyncio.create_task(self._recheck(sid, room, room_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recheck(self, sid: str, room: str, room_id: str) -> None:
        """A socket held back once: still not joined, it leaves the room; joined after all
        (the read lagged), it missed an event, so it hears ``resync`` for the conversation."""
        try:
            socket = self.sockets.get(sid)
            if socket is None:
                return
            if socket.user.mxid in await self._joined_to(room_id, fresh=True):
                payload = {"conversationId": conversation_of_room(room), "reason": "membership"}
                await self.sio.emit("resync", payload, to=sid, ignore_queue=True)
            else:
                log.info("Socket %s was in %s without taking part; taking it out", sid, room)
                await self.sio.leave_room(sid, room)
        except Exception:
            # The database away: the next event held back schedules another look.
            log.warning("Could not check again whether socket %s takes part in %s", sid, room)
        finally:
            self._rechecks.discard((sid, room))

    # Media URLs signed per user (bridge/chat/media_urls.py).
    def personal(self, event: str, data: Any) -> bool:
        return event in PERSONAL_EVENTS and has_media(data)

    def copies_for(self, data: Any, sids: list[str]) -> list[tuple[Any, list[str]]]:
        by_user: dict[str, list[str]] = {}
        for sid in sids:
            if (socket := self.sockets.get(sid)) is not None:
                by_user.setdefault(socket.user.crm_user_id, []).append(sid)
        signer = media_signer(self.app)
        return [(signer.sign_tree(data, user), group) for user, group in by_user.items()]

    async def blocked(self, namespace: str, rooms: list[str]) -> set[str]:
        manager = self.sio.manager
        allowed: set[str] = set()
        checked: set[str] = set()
        for room in rooms:
            sids = {sid for sid, _ in manager.get_participants(namespace, room)}
            if is_conversation_room(room):
                checked |= sids
                allowed |= await self._participating(room, sids)
            else:
                allowed |= sids
        return checked - allowed
