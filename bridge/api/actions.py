"""What a user does to an existing message: edit, delete, react, unreact, pin and unpin.

One service function per action, for REST and any other door: each counts the request
against the user's limit, validates the body (models.py), finds the message only in a
conversation the user takes part in (an outsider gets the same 404 as for an unknown id),
acts as the user's puppet and indexes the resulting event at once (the transaction that
brings it back later changes nothing more). Who may delete others' messages or pin follows
the room's power levels: the homeserver decides, and its 403 is ours; in a DM nobody may
delete the other's messages, whatever the levels (dm_levels.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from ..chat import enrich, serialize
from ..chat.indexer import index_event
from ..chat.serialize import CRM_FIELD, iso
from ..context import DATABASE, MATRIX
from ..db import room_lock
from ..db.conversation import DIRECT, Conversation
from ..db.crm_user import CrmUser
from ..db.relation import ANNOTATION, REPLACE
from ..db.room_event import SENT
from ..errors import Forbidden, NotFound
from ..ids import conversation_id_for_room, event_id_for_message, message_id_for_event
from ..matrix import relations
from ..matrix.homeserver import MatrixError
from ..matrix.relations import PINNED, RELATIONS
from .messaging import with_durations
from .models import EditBody, MessageRef, ReactBody, parse
from .quota import count

if TYPE_CHECKING:
    from ..chat.service import ChatService

MESSAGE_NOT_FOUND = "Message not found"


async def locate(
    service: ChatService, user: CrmUser, message_id: str, conversation_id: str | None = None
) -> tuple[Conversation, dict[str, Any]]:
    """The message and its conversation, if the user takes part; else 404, whichever."""
    event_id = event_id_for_message(message_id)
    room_id = await service.room_of_message(event_id) if event_id else None
    if event_id is None or room_id is None:
        raise NotFound(MESSAGE_NOT_FOUND)
    try:
        conversation = await service.conversation_for(user, conversation_id_for_room(room_id))
    except NotFound as e:
        raise NotFound(MESSAGE_NOT_FOUND) from e
    if conversation_id is not None and conversation_id != conversation.conversation_id:
        raise NotFound(MESSAGE_NOT_FOUND)
    event = await service.fetch_event(room_id, event_id, user.mxid)
    if event is None or not event.get("content"):  # gone, or redacted
        raise NotFound(MESSAGE_NOT_FOUND)
    return conversation, event


async def message_of(
    service: ChatService, user: CrmUser, conversation: Conversation, event: dict[str, Any]
) -> dict[str, Any]:
    """The message as this user reads it now (its latest edit applied)."""
    return (await service.messages_from_events(conversation, [event], viewer=user))[0]


_message = message_of


def _forbidden_or_raise(e: MatrixError, message: str) -> None:
    if e.status == 403:
        raise Forbidden(message) from e
    if e.status == 404:
        raise NotFound(MESSAGE_NOT_FOUND) from e


async def _sent(service: ChatService, event: dict[str, Any]) -> None:
    """Index an event we just sent, so the answer already shows it."""
    await index_event(service.app, event, notify=False, made_here=True, arrival=SENT)


def _event(
    event_id: str, room_id: str, sender: str, kind: str, content: dict[str, Any]
) -> dict[str, Any]:
    return {
        "event_id": event_id, "room_id": room_id, "sender": sender, "type": kind,
        "content": content, "origin_server_ts": int(time.time() * 1000),
    }  # fmt: skip


def _lock(service: ChatService, key: str) -> asyncio.Lock:
    locks = service.relation_locks
    if len(locks) > 10000:
        for k in [k for k, lock in locks.items() if not lock.locked()]:
            del locks[k]
    return locks.setdefault(key, asyncio.Lock())


# Edit.
def edited_content(original: dict[str, Any], text: str) -> dict[str, Any]:
    """``m.new_content``: the original message with the new text (attachments, mentions and
    the seed fields kept), without its relations."""
    new = {k: v for k, v in original.items() if k not in ("m.relates_to", "m.new_content")}
    if "url" not in new or text.strip():
        new["body"] = text
    crm = new.get(CRM_FIELD)
    if isinstance(crm, dict):
        new[CRM_FIELD] = {**crm, "content": text}
    return new


async def edit(
    service: ChatService, user: CrmUser, body: Any, *, quota: dict[str, str] | None = None
) -> dict[str, Any]:
    await count(service, user, "edit-message", quota)
    req = parse(EditBody, body)
    conversation, event = await locate(service, user, req.messageId, req.conversationId)
    if event["sender"] != user.mxid:
        raise Forbidden("Only the sender may edit a message")
    original = event["content"]
    new = edited_content(original, req.content)
    if original.get("msgtype") in ("m.audio", "m.video"):
        # Keep a duration that an earlier edit set (voice.py): the edit replaces it whole.
        current = await message_of(service, user, conversation, event)
        new = with_durations(new, [a.get("duration") for a in current["attachments"]])
    content = replacement(event["event_id"], new, req.content, "m.text")
    if "m.mentions" in new:
        content["m.mentions"] = {}  # nobody is mentioned anew by an edit
    await send_edit(service, user, conversation, content)
    return await _message(service, user, conversation, event)


def replacement(event_id: str, new: dict[str, Any], body: str, msgtype: str) -> dict[str, Any]:
    """An ``m.replace`` edit's content: the fallback body, the new content, the relation."""
    return {
        "msgtype": new.get("msgtype", msgtype),
        "body": f"* {body}",
        "m.new_content": new,
        "m.relates_to": {"rel_type": REPLACE, "event_id": event_id},
    }


async def send_edit(
    service: ChatService, user: CrmUser, conversation: Conversation, content: dict[str, Any]
) -> str:
    """Post an ``m.replace`` edit as the user's puppet and index it at once."""
    try:
        edit_id = await service.app[MATRIX].send_event(
            conversation.room_id, "m.room.message", content, as_user=user.mxid
        )
    except MatrixError as e:
        _forbidden_or_raise(e, "You cannot post in this conversation")
        raise
    await _sent(
        service, _event(edit_id, conversation.room_id, user.mxid, "m.room.message", content)
    )
    return edit_id


# Delete.
async def delete(
    service: ChatService, user: CrmUser, body: Any, *, quota: dict[str, str] | None = None
) -> dict[str, Any]:
    await count(service, user, "delete-message", quota)
    req = parse(MessageRef, body)
    conversation, event = await locate(service, user, req.messageId, req.conversationId)
    event_id = event["event_id"]
    if conversation.kind == DIRECT and event["sender"] not in user.mxids:
        # Whatever the room's levels say (an old DM's, or a creator's implicit power).
        raise Forbidden("In a direct conversation you may delete only your own messages")
    try:
        redaction_id = await service.app[MATRIX].redact(
            conversation.room_id, event_id, as_user=user.mxid
        )
    except MatrixError as e:
        _forbidden_or_raise(e, "You may delete your own messages, or any in a project you manage")
        raise
    service.events.drop(event_id)
    await _sent(
        service,
        {
            **_event(redaction_id, conversation.room_id, user.mxid, "m.room.redaction",
                     {"redacts": event_id}),
            "redacts": event_id,
        },
    )  # fmt: skip
    return {
        "message": "Message deleted",
        "conversationId": conversation.conversation_id,
        "messageId": message_id_for_event(event_id),
    }


# Reactions.
async def react(
    service: ChatService, user: CrmUser, body: Any, *, quota: dict[str, str] | None = None
) -> dict[str, Any]:
    await count(service, user, "react", quota)
    req = parse(ReactBody, body)
    conversation, event = await locate(service, user, req.messageId, req.conversationId)
    event_id = event["event_id"]
    store = service.app[RELATIONS].store
    async with _lock(service, f"react\x1f{user.mxid}\x1f{event_id}\x1f{req.key}"):
        # One reaction per person and key: whichever of their accounts made it.
        if not await store.annotations_by(event_id, list(user.mxids), req.key):
            content = {
                "m.relates_to": {"rel_type": ANNOTATION, "event_id": event_id, "key": req.key}
            }
            try:
                reaction_id = await service.app[MATRIX].send_event(
                    conversation.room_id, "m.reaction", content, as_user=user.mxid
                )
            except MatrixError as e:
                if e.errcode != "M_DUPLICATE_ANNOTATION":
                    _forbidden_or_raise(e, "You cannot react in this conversation")
                    raise
            else:
                await _sent(
                    service,
                    _event(reaction_id, conversation.room_id, user.mxid, "m.reaction", content),
                )
    return await _message(service, user, conversation, event)


async def unreact(
    service: ChatService, user: CrmUser, body: Any, *, quota: dict[str, str] | None = None
) -> dict[str, Any]:
    await count(service, user, "react", quota)
    req = parse(ReactBody, body)
    conversation, event = await locate(service, user, req.messageId, req.conversationId)
    event_id = event["event_id"]
    store = service.app[RELATIONS].store
    async with _lock(service, f"react\x1f{user.mxid}\x1f{event_id}\x1f{req.key}"):
        for rel in await store.annotations_by(event_id, [user.mxid], req.key):
            try:
                redaction_id = await service.app[MATRIX].redact(
                    conversation.room_id, rel.event_id, as_user=user.mxid
                )
            except MatrixError as e:
                _forbidden_or_raise(e, "You cannot remove this reaction")
                raise
            redaction = _event(
                redaction_id, conversation.room_id, user.mxid, "m.room.redaction",
                {"redacts": rel.event_id},
            )  # fmt: skip
            await _sent(service, {**redaction, "redacts": rel.event_id})
    return await _message(service, user, conversation, event)


# Pins.
async def _set_pinned(
    service: ChatService, user: CrmUser, body: Any, pin: bool, quota: dict[str, str] | None
) -> dict[str, Any]:
    await count(service, user, "pin-message", quota)
    req = parse(MessageRef, body)
    conversation, event = await locate(service, user, req.messageId, req.conversationId)
    event_id, room_id = event["event_id"], conversation.room_id
    matrix = service.app[MATRIX]
    # In this process, then across processes (PostgreSQL): a read-modify-write of the list.
    async with (
        _lock(service, f"pins\x1f{room_id}"),
        room_lock.hold(service.app[DATABASE], "pins", room_id),
    ):
        # The state itself, not our copy: a pin made elsewhere a moment ago must survive.
        state = await matrix.get_state_event(room_id, PINNED, as_user=user.mxid) or {}
        listed = state.get("pinned") if isinstance(state.get("pinned"), list) else []
        pins = _not_stale(service, room_id, [p for p in listed if isinstance(p, str)])
        wanted = [*pins, event_id] if pin and event_id not in pins else pins
        if not pin:
            wanted = [p for p in pins if p != event_id]
        if wanted != pins:
            try:
                state_id = await matrix.send_state(
                    room_id, PINNED, {"pinned": wanted}, as_user=user.mxid
                )
            except MatrixError as e:
                _forbidden_or_raise(e, "You may not pin messages in this conversation")
                raise
            _wrote_pins(service, room_id, pins, wanted)
            pinned_event = _event(state_id, room_id, user.mxid, PINNED, {"pinned": wanted})
            await _sent(service, {**pinned_event, "state_key": ""})
        elif (await service.app[RELATIONS].pins_of([room_id]))[room_id] is None:
            await service.app[RELATIONS].set_pins(room_id, pins)
    return await _message(service, user, conversation, event)


# How long after its own write this process takes the pinned list it replaced, read back,
# for a reader's lag rather than a change made elsewhere.
PIN_LAG_S = 30.0


def _not_stale(service: ChatService, room_id: str, read: list[str]) -> list[str]:
    """The pinned list to change: what the homeserver answered, unless that is one of the
    lists this process replaced moments ago. With Synapse's workers the state is read from
    a worker that may not have replicated the last writes yet; changing that stale list
    would drop the pins just made (docs/architecture.md, "Synapse with workers"). A list
    changed elsewhere is none of them, and is taken as read."""
    chain, at = service.pin_writes.get(room_id, ([], 0.0))
    if read in chain[:-1] and time.monotonic() - at < PIN_LAG_S:
        return list(chain[-1])
    return read


def _wrote_pins(service: ChatService, room_id: str, based_on: list[str], wrote: list[str]) -> None:
    writes = service.pin_writes
    chain, at = writes.pop(room_id, ([], 0.0))
    fresh = chain and chain[-1] == based_on and time.monotonic() - at < PIN_LAG_S
    writes[room_id] = ([*chain[-20:], wrote] if fresh else [based_on, wrote], time.monotonic())
    if len(writes) > 10000:
        writes.pop(next(iter(writes)))


def _pin_answer(user: CrmUser, message: dict[str, Any], by: str) -> dict[str, Any]:
    """The message at the top level (as before), and ``data`` with who (un)pinned it, which
    the CRM messenger reads."""
    done = {by: serialize.user_object(user), f"{by.removesuffix('By')}At": iso(time.time() * 1000)}
    return {**message, "success": True, "data": {**message, **done}}


async def pin(
    service: ChatService, user: CrmUser, body: Any, *, quota: dict[str, str] | None = None
) -> dict[str, Any]:
    return _pin_answer(user, await _set_pinned(service, user, body, True, quota), "pinnedBy")


async def unpin(
    service: ChatService, user: CrmUser, body: Any, *, quota: dict[str, str] | None = None
) -> dict[str, Any]:
    return _pin_answer(user, await _set_pinned(service, user, body, False, quota), "unpinnedBy")


async def pinned(service: ChatService, user: CrmUser, conversation_id: str) -> list[dict[str, Any]]:
    """Full message objects of the conversation's pins, newest pin first."""
    conversation = await service.conversation_for(user, conversation_id)
    pins = await enrich.pins_for(service, conversation.room_id, user.mxid)
    events = await asyncio.gather(
        *(service.fetch_event(conversation.room_id, p, user.mxid) for p in reversed(pins[-100:]))
    )
    found = [
        e for e in events
        if e and e.get("content") and e.get("type") in relations.MESSAGE_TYPES
        and e.get("room_id", conversation.room_id) == conversation.room_id
    ]  # fmt: skip
    return await service.messages_from_events(conversation, found, viewer=user)
