"""MSC2409 ephemeral events from Matrix to sockets: typing, read receipts, presence.

They come from every Matrix client alike (a CRM user's socket, Element, ...). Each relay
keeps the little state it needs to turn Matrix's snapshots into the seed's transitions; it
lives in the one process that receives transactions.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import socketio
from aiohttp import web

from ..chat import serialize
from ..chat.events import read_receipts
from ..chat.serialize import iso
from ..chat.service import CHAT
from ..context import CONVERSATIONS, EVENT_INDEX, MATRIX, USERS
from ..db.announced_receipt import AnnouncedReceiptStore
from ..db.conversation import Conversation
from ..db.crm_user import CrmUser
from ..ids import message_id_for_event
from ..matrix.dispatcher import Event
from ..matrix.relations import read_position
from .rooms import conversation_room, participants, user_room

log = logging.getLogger("bridge.realtime.ephemeral")

# messages_read lists at most this many message ids; message_update sends at most this many.
MAX_READ_IDS = 200
MAX_UPDATED = 20


# Most Matrix users Relays remembers as online (a directory's worth, and then some).
_ONLINE_CAP = 100000


class Relays:
    def __init__(
        self, app: web.Application, sio: socketio.AsyncServer, announced: AnnouncedReceiptStore
    ) -> None:
        self.app = app
        self.sio = sio
        self.announced = announced
        # Who types in each room, as the last m.typing said. Pruned: a room whose list
        # empties is dropped, so the map holds only rooms where someone types right now.
        self._typing: dict[str, set[str]] = {}
        # Matrix users last announced online. Pruned: an offline one is dropped (absent
        # means offline), and past _ONLINE_CAP the map is emptied (the cost: a user may be
        # announced online once more).
        self._online: set[str] = set()

    async def _person(self, mxid: str) -> tuple[str, dict[str, Any]]:
        """(userId, user object) for a puppet, a linked account or any Matrix user."""
        user = await self.app[CHAT].user_object(mxid)
        return str(user["_id"]), user

    async def _others(self, room_id: str, person_id: str) -> list[str]:
        """The user rooms of everyone in the conversation but this person."""
        return [
            user_room(u.crm_user_id)
            for u in await participants(self.app, room_id)
            if u.crm_user_id != person_id
        ]

    # m.typing: the full list of typers in a room; we emit the differences.
    async def typing(self, event: Event) -> None:
        room_id = event.get("room_id")
        ids = (event.get("content") or {}).get("user_ids")
        if not room_id or not isinstance(ids, list):
            return
        conversation = await self.app[CONVERSATIONS].get_by_room(room_id)
        if conversation is None:
            return
        now = {i for i in ids if isinstance(i, str)}
        before = self._typing.pop(room_id, set())
        if now:
            self._typing[room_id] = now
        changes = [(m, True) for m in sorted(now - before)] + [
            (m, False) for m in sorted(before - now)
        ]
        for mxid, is_typing in changes:
            person_id, person = await self._person(mxid)
            rooms = await self._others(room_id, person_id)
            if rooms:
                payload = {
                    "conversationId": conversation.conversation_id,
                    "userId": person_id,
                    "user": person,
                    "isTyping": is_typing,
                }
                await self.sio.emit("user_typing", payload, to=rooms)

    # m.receipt: a receipt at E reads everything up to E in the room's timeline order.
    async def receipt(self, event: Event, slow: Any) -> None:
        room_id = event.get("room_id")
        content = event.get("content")
        if not room_id or not isinstance(content, dict):
            return
        conversation = await self.app[CONVERSATIONS].get_by_room(room_id)
        if conversation is None:
            return
        for receipt in read_receipts(content):
            await self._read(conversation, receipt.event_id, receipt.mxid, receipt.ts, slow)

    async def _read(
        self, conversation: Conversation, event_id: str, mxid: str, ts: Any, slow: Any
    ) -> None:
        target = await read_position(self.app, conversation.room_id, event_id)
        if target is None:
            return
        previous = await self.announced.advance(
            conversation.room_id, mxid, target.event_id, target.pos
        )
        if previous is None:
            return  # already announced this far
        person_id, _ = await self._person(mxid)
        reader = await self.app[USERS].get_by_mxid(mxid)
        own = set(reader.mxids) if reader else {mxid}
        newly = await self.app[EVENT_INDEX].read_between(conversation.room_id, previous, target.pos)
        newly = [e for e in newly if e.sender not in own][-MAX_READ_IDS:]
        if not newly:
            return
        rooms = await self._others(conversation.room_id, person_id)
        if not rooms:
            return
        read_at = iso(ts if isinstance(ts, int | float) else None) or iso(target.origin_ts)
        await self.sio.emit(
            "messages_read",
            {
                "conversationId": conversation.conversation_id,
                "messageIds": [message_id_for_event(e.event_id) for e in newly],
                "readBy": {"user": person_id, "readAt": read_at},
            },
            to=rooms,
        )
        updated = [e.event_id for e in newly[-MAX_UPDATED:]]
        slow.submit(
            conversation.room_id, lambda: self._message_updates(conversation, updated, rooms)
        )

    async def _message_updates(
        self, conversation: Conversation, event_ids: list[str], rooms: list[str]
    ) -> None:
        chat = self.app[CHAT]
        members = await participants(self.app, conversation.room_id)
        reader = next((u.mxid for u in members), self.app[MATRIX].bot_mxid)
        events = await asyncio.gather(
            *(chat.fetch_event(conversation.room_id, e, reader) for e in event_ids)
        )
        found = [e for e in events if e and e.get("content")]
        for message in await chat.messages_from_events(conversation, found):
            message["cursor"] = message["_id"]
            await self.sio.emit("message_update", message, to=rooms)

    # Presence: online/offline transitions, to those sharing a conversation.
    async def presence(self, event: Event, connected: Any) -> None:
        """m.presence of Element users (and linked accounts without an open CRM socket).

        Puppets are announced by the presence tracker when it sets them, not from here:
        Synapse can drop an appservice's presence updates when several arrive at once."""
        mxid = event.get("sender")
        content = event.get("content")
        if not isinstance(mxid, str) or not isinstance(content, dict):
            return
        state = content.get("presence")
        if not isinstance(state, str):
            return
        user = await self.app[USERS].get_by_mxid(mxid)
        if user is not None and (user.mxid == mxid or await connected(user.crm_user_id)):
            return
        online = state == "online"
        if (mxid in self._online) == online:
            return
        if online:
            if len(self._online) >= _ONLINE_CAP:
                self._online.clear()
            self._online.add(mxid)
        else:
            self._online.discard(mxid)
        person_id, person = await self._person(mxid)
        await self.announce(person_id, person, [mxid], online)

    async def announce_user(self, user: CrmUser, online: bool) -> None:
        """A CRM user's first socket opened, or their last one closed and the grace passed."""
        await self.announce(user.crm_user_id, serialize.user_object(user), [user.mxid], online)

    async def announce(
        self, person_id: str, person: dict[str, Any], mxids: list[str], online: bool
    ) -> None:
        conversation_ids = await self.app[CONVERSATIONS].ids_joined_by(mxids)
        if not conversation_ids:
            return
        rooms = [conversation_room(c) for c in conversation_ids]
        if online:
            payload = {"id": person_id, "name": person.get("name"), "avatar": person.get("avatar")}
            await self.sio.emit("user_online", payload, to=rooms)
        else:
            await self.sio.emit("user_offline", person_id, to=rooms)
