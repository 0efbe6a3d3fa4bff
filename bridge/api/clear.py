"""Clear-chat: hide a conversation's history up to now for one user, keep it for everyone else.

The record is the user's Matrix room account data (``com.crm.cleared``: the last hidden
event and its timestamp); nothing is redacted. The bridge keeps a copy in
``cleared_history`` so that lists and unread counts need no homeserver call; each process
checks that copy against Matrix the first time it serves a history page for the pair, so
account data changed elsewhere (or a lost table) is followed.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ..chat.serialize import iso
from ..context import EVENT_INDEX, MATRIX
from ..db.cleared import ClearPoint
from ..db.crm_user import CrmUser
from ..errors import BridgeError
from ..ids import message_id_for_event
from ..realtime.emit import to_own_sockets
from .models import ChatCleared, ClearChatResult, ConversationRef, parse
from .quota import count

if TYPE_CHECKING:
    from ..chat.service import ChatService

log = logging.getLogger("bridge.api.clear")

CLEARED_TYPE = "com.crm.cleared"


async def clear_chat(
    service: ChatService, user: CrmUser, conversation_id: Any, *, quota: dict[str, str] | None
) -> dict[str, Any]:
    await count(service, user, "clear-chat", quota)
    ref = parse(ConversationRef, {"conversationId": conversation_id})
    conversation = await service.conversation_for(user, ref.conversationId)
    room_id = conversation.room_id
    now = int(time.time() * 1000)
    latest = await service.app[EVENT_INDEX].last_read_point(room_id)
    event_id, pos, ts = (
        (latest.event_id, latest.pos, latest.origin_ts) if latest else (None, 0, now)
    )
    await service.app[MATRIX].set_room_account_data(
        user.mxid, room_id, CLEARED_TYPE, {"event_id": event_id, "ts": ts, "cleared_at": now}
    )
    await service.cleared.put(ClearPoint(room_id, user.mxid, event_id, pos, ts))
    service.clear_checked.add((user.mxid, room_id))
    result = ClearChatResult(
        message="Chat cleared",
        conversationId=conversation.conversation_id,
        clearedAt=iso(ts) or "",
        messageId=message_id_for_event(event_id) if event_id else None,
    )
    # The user's other tabs and devices empty the conversation too; nobody else's change.
    await to_own_sockets(
        service.app, user, "chat_cleared",
        ChatCleared(conversationId=conversation.conversation_id, clearedBy=user.crm_user_id),
    )  # fmt: skip
    return result.model_dump(by_alias=True)


async def clear_point(service: ChatService, user: CrmUser, room_id: str) -> ClearPoint | None:
    """The user's clear point in this conversation, from the cache checked against Matrix."""
    cached = await service.cleared.get(room_id, user.mxid)
    key = (user.mxid, room_id)
    if key in service.clear_checked:
        return cached
    try:
        data = await service.app[MATRIX].get_room_account_data(user.mxid, room_id, CLEARED_TYPE)
    except BridgeError as e:  # the homeserver is busy or away: the cache stands for now
        log.debug("Cannot check the clear point of %s in %s: %s", user.mxid, room_id, e)
        return cached
    point = await _from_account_data(service, user, room_id, data)
    if point is None and cached is not None:
        await service.cleared.delete(room_id, user.mxid)
    elif point is not None and point != cached:
        await service.cleared.put(point)
    if len(service.clear_checked) > 100000:
        service.clear_checked.clear()
    service.clear_checked.add(key)
    return point


async def _from_account_data(
    service: ChatService, user: CrmUser, room_id: str, data: dict[str, Any]
) -> ClearPoint | None:
    ts = data.get("ts") if isinstance(data, dict) else None
    if not isinstance(ts, int) or isinstance(ts, bool):
        return None  # never cleared, or emptied to undo it
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    indexed = await service.app[EVENT_INDEX].get(event_id) if event_id else None
    if indexed is not None and indexed.room_id == room_id:
        pos = indexed.pos
    else:
        pos = await service.app[EVENT_INDEX].pos_at(room_id, ts)
    return ClearPoint(room_id, user.mxid, event_id, int(pos or 0), ts)


async def hidden(service: ChatService, point: ClearPoint | None, event: dict[str, Any]) -> bool:
    """Whether the user cleared this event away (timeline order decides only on a tie in
    time)."""
    if point is None:
        return False
    ts = int(event.get("origin_server_ts") or 0)
    pos = None
    if ts == point.ts and event["event_id"] != point.event_id:
        indexed = await service.app[EVENT_INDEX].get(event["event_id"])
        pos = indexed.pos if indexed else None
    return point.hides(event["event_id"], ts, pos)
