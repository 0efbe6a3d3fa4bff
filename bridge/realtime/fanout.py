"""Room events from Matrix to sockets: new messages, and changes to a conversation.

* A message is emitted once per event id, from whichever path sees it first: the local echo
  of the facade that sent it (as soon as Synapse returned the event id) or the appservice
  transaction. ``new_message`` and ``conversation_update`` go to the conversation's room,
  sender included. Each message carries a safe ``cursor`` for catch-up (see cursors.py).
* Whatever a lane had to drop for a conversation (bridge/realtime/pump.py) becomes
  ``resync {conversationId, reason}`` to the conversation's room: its sockets refetch.
* A name, topic, avatar, project-link or power-level change, or a membership change, sends
  ``conversation_update`` with the full conversation object to every participant. A CRM
  user who joins has all their sockets (in any process) enter the conversation's room; one
  who leaves has them leave it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import socketio
from aiohttp import web

from ..api.models import MessagePinned, MessageUnpinned, UserObject
from ..chat.serialize import iso
from ..chat.service import CHAT
from ..context import CONVERSATIONS, USERS
from ..db.conversation import Conversation
from ..db.crm_user import CrmUser
from ..ids import conversation_id_for_room, message_id_for_event
from ..matrix.dispatcher import Event
from ..redis_state import RedisState
from .access import Access
from .cursors import Frontier
from .dedup import Claims
from .manager import BridgeRedisManager
from .pump import Lanes
from .registry import SocketRegistry
from .rooms import conversation_room, participants, user_room

log = logging.getLogger("bridge.realtime.fanout")

# State events after which a conversation object changes.
CONVERSATION_STATE = frozenset(
    {"m.room.name", "m.room.topic", "m.room.avatar", "m.room.power_levels", "m.room.member"}
)
PROJECT_LINK_PREFIX = "com.crm."


def conversation_update(conversation_id: str, message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": conversation_id,
        "lastMessage": message.get("content"),
        "lastMessageTime": message.get("createdAt"),
    }


class Fanout:
    def __init__(
        self,
        app: web.Application,
        sio: socketio.AsyncServer,
        claims: Claims,
        registry: SocketRegistry,
        frontier: Frontier,
        access: Access,
        state: RedisState | None = None,
    ) -> None:
        self.app = app
        self.sio = sio
        self.claims = claims
        self.registry = registry
        self.frontier = frontier
        self.access = access
        self.state = state
        self._pending_changes: set[str] = set()

    # Messages.
    async def message(
        self, conversation_id: str, message: dict[str, Any], cursor: str | None
    ) -> bool:
        """Emit a message unless some path already did; True when this call emitted it."""
        key = message.get("eventId") or message.get("_id")
        if not key or not await self.claims.claim(str(key)):
            return False
        await self._emit(conversation_id, message, cursor)
        return True

    async def _emit(
        self, conversation_id: str, message: dict[str, Any], cursor: str | None
    ) -> None:
        payload = {**message, "conversationId": conversation_id, "cursor": cursor}
        room = conversation_room(conversation_id)
        await self.sio.emit("new_message", payload, to=room)
        await self.sio.emit(
            "conversation_update", conversation_update(conversation_id, payload), to=room
        )

    async def local_echo(self, conversation: Conversation | Any, message: dict[str, Any]) -> None:
        conversation_id = getattr(conversation, "conversation_id", None) or message.get(
            "conversationId"
        )
        key = message.get("eventId") or message.get("_id")
        if conversation_id and key:
            # Two Redis round trips at once: the catch-up cursor and the exactly-once claim.
            cursor, ours = await asyncio.gather(
                self.frontier.get(conversation_id), self.claims.claim(str(key))
            )
            if ours:
                await self._emit(conversation_id, message, cursor)

    async def message_event(self, event: Event) -> None:
        """From the transaction, in timeline order: this message is a safe cursor."""
        if CHAT not in self.app:
            return
        chat = self.app[CHAT]
        conversation = await chat.conversation_by_room(event["room_id"])
        if conversation is None:
            return
        conversation_id = conversation.conversation_id
        message_id = message_id_for_event(event["event_id"])
        # Claimed before it is built: a message the send path's local echo already emitted
        # (most of a CRM's messages) costs no message object here.
        ours = await self.claims.claim(event["event_id"])
        if not self._fans_out():
            # Other processes' sockets may be missing messages: keep the cursor pinned.
            if ours:
                cursor = await self.frontier.get(conversation_id)
                await self._emit(conversation_id, await chat.message_from_event(event), cursor)
            return
        if ours:
            await self._emit(conversation_id, await chat.message_from_event(event), message_id)
        if self._fans_out():  # the emit reached every process (or none needed to see it)
            await self.frontier.set(conversation_id, message_id)

    # Changes to existing messages (bridge/matrix/relations.py says which).
    async def messages_changed(self, room_id: str, event_ids: list[str], slow: Lanes) -> None:
        """Edits, reactions, thread replies and pins: ``message_update`` with the full message
        to the conversation's participants (``me`` on reactions is false: many read it)."""
        conversation = await self.app[CONVERSATIONS].get_by_room(room_id)
        if conversation is None or CHAT not in self.app:
            return
        chat = self.app[CHAT]
        reader = await chat.reader_of(conversation)
        events = await asyncio.gather(
            *(chat.fetch_event(room_id, e, reader) for e in dict.fromkeys(event_ids))
        )
        found = [e for e in events if e and e.get("content")]
        room = conversation_room(conversation.conversation_id)
        for message in await chat.messages_from_events(conversation, found):
            await self.sio.emit(
                "message_update", {**message, "conversationId": conversation.conversation_id},
                to=room,
            )  # fmt: skip
        if conversation.last_event_id in event_ids:
            self.schedule_change(room_id, slow)  # lastMessage shows the new text

    async def pins_changed(
        self, room_id: str, pinned: list[str], unpinned: list[str], by: str, at: int | None
    ) -> None:
        """A change of the room's pins, from the CRM or from Element: ``message_pinned`` and
        ``message_unpinned`` to the conversation, naming who did it (``message_update``
        carries the messages themselves)."""
        conversation = await self.app[CONVERSATIONS].get_by_room(room_id)
        if conversation is None or CHAT not in self.app:
            return
        person = await self.app[CHAT].user_object(by)
        room = conversation_room(conversation.conversation_id)
        cid = conversation.conversation_id
        for event_id in pinned:
            payload = MessagePinned(
                conversationId=cid, messageId=message_id_for_event(event_id),
                pinnedBy=UserObject.model_validate(person), pinnedAt=iso(at) or "",
            )  # fmt: skip
            await self.sio.emit("message_pinned", payload.model_dump(by_alias=True), to=room)
        for event_id in unpinned:
            gone = MessageUnpinned(
                conversationId=cid, messageId=message_id_for_event(event_id),
                unpinnedBy=UserObject.model_validate(person),
            )  # fmt: skip
            await self.sio.emit("message_unpinned", gone.model_dump(by_alias=True), to=room)

    async def messages_deleted(self, room_id: str, event_ids: list[str], slow: Lanes) -> None:
        """A redaction: ``message_deleted``, then the conversation (lastMessage, unread)."""
        conversation = await self.app[CONVERSATIONS].get_by_room(room_id)
        if conversation is None:
            return
        room = conversation_room(conversation.conversation_id)
        for event_id in dict.fromkeys(event_ids):
            payload = {
                "conversationId": conversation.conversation_id,
                "messageId": message_id_for_event(event_id),
            }
            await self.sio.emit("message_deleted", payload, to=room)
        self.schedule_change(room_id, slow)

    async def resync(self, key: str, reason: str) -> None:
        """A lane dropped a job of this room (it did not fit, failed or ran out of time):
        the conversation's sockets hear ``resync {conversationId, reason}`` and refetch it,
        instead of missing an event in silence. Other keys (presence) are repaired by the
        next transition."""
        if not key.startswith("!"):
            return
        conversation_id = conversation_id_for_room(key)
        payload = {"conversationId": conversation_id, "reason": reason}
        await self.sio.emit("resync", payload, to=conversation_room(conversation_id))

    def _fans_out(self) -> bool:
        return self.state is None or self.state.up

    # Conversation changes.
    async def _sids(self, user: CrmUser) -> list[str]:
        """The user's sockets; in one process, only those still connected here (a Redis
        manager forwards the others to their process, which ignores closed ones)."""
        sids = await self.registry.sids(user.crm_user_id)
        manager = self.sio.manager
        if isinstance(manager, BridgeRedisManager):
            return sids
        return [sid for sid in sids if manager.is_connected(sid, "/")]

    async def enter(self, user: CrmUser, conversation_id: str) -> None:
        room = conversation_room(conversation_id)
        for sid in await self._sids(user):
            await self.sio.enter_room(sid, room)

    async def leave(self, user: CrmUser, conversation_id: str) -> None:
        # Every process takes out its own sockets of the user (the directory usually did
        # already, when it applied the removal).
        await self.access.revoke(user.crm_user_id, conversation_id)

    async def membership(self, event: Event) -> None:
        """Move the sockets of a CRM user who joined or left (before anything else is sent)."""
        conversation = await self.app[CONVERSATIONS].get_by_room(event["room_id"])
        user = await self.app[USERS].get_by_mxid(event.get("state_key") or "")
        if conversation is None or user is None or event["state_key"] != user.mxid:
            return
        membership = (event.get("content") or {}).get("membership")
        self.access.forget(conversation.room_id)
        if membership == "join":
            await self.enter(user, conversation.conversation_id)
        elif membership in ("leave", "ban"):
            await self.leave(user, conversation.conversation_id)

    def schedule_change(self, room_id: str, lane: Lanes, delay: float = 0.3) -> None:
        """One update per burst (creating a room or adding 50 members is one change), a
        moment later: the directory records the membership it applied right after the
        homeserver answered, which may be after the event reached us."""
        if room_id in self._pending_changes:
            return
        self._pending_changes.add(room_id)

        async def job() -> None:
            self._pending_changes.discard(room_id)
            await self.conversation_changed(room_id)

        asyncio.get_running_loop().call_later(delay, lane.submit, room_id, job)

    async def conversation_changed(self, room_id: str) -> None:
        """The full conversation object, as each participant lists it, to each participant."""
        conversation = await self.app[CONVERSATIONS].get_by_room(room_id)
        if conversation is None or CHAT not in self.app:
            return
        chat = self.app[CHAT]
        limit = asyncio.Semaphore(8)

        async def send_to(user: CrmUser) -> None:
            async with limit:
                listed = await chat.conversations_for(user, room_id=room_id)
            if not listed:
                return
            full = listed[0]
            last = full.get("lastMessage") or {}
            payload = {
                **full,
                "id": conversation.conversation_id,
                "lastMessage": last.get("content") if isinstance(last, dict) else last,
                "lastMessageTime": last.get("createdAt") if isinstance(last, dict) else None,
            }
            await self.sio.emit("conversation_update", payload, to=user_room(user.crm_user_id))

        # Only users with a socket somewhere: one who connects later lists afresh anyway, and
        # a directory sync changes rooms whose members are mostly offline.
        members = await participants(self.app, room_id)
        online = await self.registry.connected_among([u.crm_user_id for u in members])
        await asyncio.gather(*(send_to(u) for u in members if u.crm_user_id in online))


def is_conversation_change(event: Event) -> bool:
    kind = event.get("type", "")
    return "state_key" in event and (
        kind in CONVERSATION_STATE or kind.startswith(PROJECT_LINK_PREFIX)
    )
