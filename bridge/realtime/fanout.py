"""Room events from Matrix to sockets: new messages, and changes to a conversation.

* A message is announced on the delivery log (log.py) by whichever path indexed it first
  (the send path of the facade that sent it, at once; else the transaction), and every
  process delivers ``new_message`` and ``conversation_update`` to its sockets in the
  conversation's room once per seq, sender included, with the seq as ``cursor``.
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

from ..api.models import MessagePinned, MessageUnpinned, User
from ..chat.serialize import iso
from ..chat.service import CHAT
from ..context import CONVERSATIONS, EVENT_INDEX, USERS
from ..db.conversation import Conversation
from ..db.crm_user import CrmUser
from ..ids import conversation_id_for_room, message_id_for_event, room_id_for_conversation
from ..matrix.dispatcher import Event
from .access import Access
from .log import DeliveryLog
from .pump import Lanes
from .registry import SocketRegistry
from .rooms import conversation_room, participants, user_room
from .transport import BridgeRedisManager

log = logging.getLogger("bridge.realtime.fanout")

# State events after which a conversation object changes.
CONVERSATION_STATE = frozenset(
    {"m.room.name", "m.room.topic", "m.room.avatar", "m.room.power_levels", "m.room.member"}
)
PROJECT_LINK_PREFIX = "com.crm."


class Fanout:
    def __init__(
        self,
        app: web.Application,
        sio: socketio.AsyncServer,
        log: DeliveryLog,
        registry: SocketRegistry,
        access: Access,
    ) -> None:
        self.app = app
        self.sio = sio
        self.log = log
        self.registry = registry
        self.access = access
        self._pending_changes: set[str] = set()

    # Messages: announced on the delivery log (log.py), which every process delivers.
    async def local_echo(
        self, conversation: Conversation, message: dict[str, Any], seq: int, fresh: bool
    ) -> None:
        """The send path indexed its message (``fresh``: made the row): announce it now,
        with the object it built."""
        await self.log.publish(conversation.room_id, seq, message, fresh=fresh)

    async def message_event(self, event: Event) -> None:
        """From the transaction, after the indexer: announced unless some path did."""
        if CHAT not in self.app:
            return
        room_id, event_id = event["room_id"], event["event_id"]
        row = (await self.app[EVENT_INDEX].positions([event_id])).get(event_id)
        if row is None or await self.log.published(room_id, row.seq):
            return  # not a message of the log (redacted since), or announced already
        chat = self.app[CHAT]
        if await chat.conversation_by_room(room_id) is None:
            return
        await self.log.publish(room_id, row.seq, await chat.message_from_event(event))

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
        for message in await chat.messages_from_events(conversation, found):
            # Through the delivery lanes: never ahead of the message it changes (log.py).
            await self.log.change(
                room_id, "message_update",
                {**message, "conversationId": conversation.conversation_id},
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
                pinnedBy=User.model_validate(person), pinnedAt=iso(at) or "",
            )  # fmt: skip
            await self.sio.emit("message_pinned", payload.model_dump(by_alias=True), to=room)
        for event_id in unpinned:
            gone = MessageUnpinned(
                conversationId=cid, messageId=message_id_for_event(event_id),
                unpinnedBy=User.model_validate(person),
            )  # fmt: skip
            await self.sio.emit("message_unpinned", gone.model_dump(by_alias=True), to=room)

    async def messages_deleted(self, room_id: str, event_ids: list[str], slow: Lanes) -> None:
        """A redaction: ``message_deleted``, then the conversation (lastMessage, unread)."""
        conversation = await self.app[CONVERSATIONS].get_by_room(room_id)
        if conversation is None:
            return
        for event_id in dict.fromkeys(event_ids):
            payload = {
                "conversationId": conversation.conversation_id,
                "messageId": message_id_for_event(event_id),
            }
            # Through the delivery lanes: never ahead of the message it removes (log.py).
            await self.log.change(room_id, "message_deleted", payload)
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
        sids = await self._sids(user)
        if sids and (room_id := room_id_for_conversation(conversation_id)) is not None:
            await self.log.entering([room_id])  # this process's baseline (log.py)
        for sid in sids:
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

        def submit() -> None:
            if not lane.submit(room_id, job):
                # Refused (the lane said resync): the next change must be scheduled again.
                self._pending_changes.discard(room_id)

        asyncio.get_running_loop().call_later(delay, submit)

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
