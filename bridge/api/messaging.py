"""Sending messages and read markers as the user's puppet."""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

from ..chat import enrich, serialize
from ..chat.cursor import cursor_of
from ..chat.indexer import index_event
from ..chat.serialize import AUDIO_FIELD, CRM_FIELD, VOICE_FIELD, ReadState
from ..context import EVENT_INDEX, LOCAL_ECHO, MATRIX, RECEIPTS
from ..db.conversation import Conversation
from ..db.crm_user import CrmUser
from ..db.room_event import SENT
from ..errors import Conflict, Forbidden, InvalidParam, NotFound
from ..ids import event_id_for_message, message_id_for_event
from ..matrix.homeserver import MatrixError
from ..matrix.relations import RELATIONS
from . import imports
from .files import check_files, store_files
from .models import (
    MAX_ATTACHMENTS,
    MAX_CONTENT,
    MAX_CONTENT_BYTES,
    AttachmentIn,
    MarkReadBody,
    SendBody,
    parse,
)
from .quota import count

if TYPE_CHECKING:
    from ..chat.service import ChatService

CONVERSATION_NOT_FOUND = "Conversation not found"

log = logging.getLogger("bridge.api.messaging")

UPLOAD = "/api/chat/upload"


def _conversation_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidParam("conversationId is required")
    return value


def _given(**fields: Any) -> dict[str, Any]:
    """The fields a caller gave (None is "not given", as in the seed's backend)."""
    return {k: v for k, v in fields.items() if v is not None}


def _check_text(content: Any) -> None:
    if not isinstance(content, str):
        raise InvalidParam("content must be a string")
    if len(content) > MAX_CONTENT or len(content.encode("utf-8")) > MAX_CONTENT_BYTES:
        raise InvalidParam(
            f"content is too long (at most {MAX_CONTENT} characters and "
            f"{MAX_CONTENT_BYTES // 1024} KiB)"
        )


async def _resolve_attachments(
    service: ChatService, user: CrmUser, attachments: list[Any]
) -> list[dict]:
    """Files uploaded through /api/chat/upload (we trust our own record of them), or URLs
    under ``attachments.import_from``, fetched and stored now (imports.py). All are checked
    before any is fetched, and a fetch that fails sends nothing."""
    found: list[tuple[AttachmentIn, Any]] = []
    to_import: list[int] = []
    for raw in attachments:
        if not isinstance(raw, dict):
            raise InvalidParam("Each attachment must be an object with its url")
        item = parse(AttachmentIn, raw)
        url = item.url
        mxc = serialize.mxc_of_url(url)
        media = await service.media.get(mxc) if mxc else None
        # Only files the sender may still download: re-posting must not restore lost access.
        if media is not None and not await service.media.may_download(
            mxc, user.crm_user_id, user.mxids
        ):
            media = None
        if media is None:
            under = imports.prefixes(service.app)
            if not imports.allowed(url, under):
                also = " or a URL under attachments.import_from" if under else ""
                raise InvalidParam(f"Each attachment must be a file returned by {UPLOAD}{also}")
            to_import.append(len(found))
        found.append((item, media))
    # All fetched (under one deadline) before any is stored.
    urls = [found[i][0].url for i in to_import]
    fetched = dict(zip(to_import, await imports.fetch_all(service.app, urls), strict=True))
    resolved = []
    for index, (item, media) in enumerate(found):
        if index in to_import:
            name, data = fetched[index]
            checked = check_files(service.app, [(item.originalName or item.filename or name, data)])
            stored = (await store_files(service.app, user, checked))[0]
            media = await service.media.get(serialize.mxc_of_url(stored["url"]) or "")
        assert media is not None
        attachment = {
            "mxc": media.mxc,
            "filename": media.filename,
            "originalName": media.original_name,
            "mimetype": media.mimetype,
            "size": media.size,
        }
        if item.duration is not None:
            # Milliseconds: Matrix events hold no floats (canonical JSON).
            attachment["durationMs"] = round(item.duration * 1000)
        resolved.append(attachment)
    return resolved


def _is_audio(mimetype: str) -> bool:
    # A browser's recorded voice is WebM, found to be video/webm by its bytes.
    return mimetype.startswith("audio/") or mimetype == "video/webm"


def _msgtype(kind: str, mimetype: str) -> str:
    if kind == "voice" or mimetype.startswith("audio/"):
        return "m.audio"
    if mimetype.startswith("image/"):
        return "m.image"
    if mimetype.startswith("video/"):
        return "m.video"
    return "m.file"


def build_content(text: str, kind: str, attachments: list[dict]) -> dict[str, Any]:
    """A standard Matrix message Element renders, plus the seed fields under CRM_FIELD.

    A voice message is Element's: ``m.audio`` marked with MSC3245, its duration in ms in
    ``info.duration`` and MSC1767's audio block. Durations are ms everywhere in the event
    (``durationMs`` in CRM_FIELD): Matrix events hold no floats. The API speaks seconds."""
    crm = {"type": kind, "content": text, "attachments": attachments}
    if not attachments:
        return {"msgtype": "m.text", "body": text, CRM_FIELD: crm}
    first = attachments[0]
    mimetype = first["mimetype"]
    if kind == "voice" and mimetype == "video/webm":
        mimetype = "audio/webm"  # a browser's recorded voice: WebM with only an audio track
    info: dict[str, Any] = {"mimetype": mimetype, "size": first["size"]}
    content: dict[str, Any] = {
        "msgtype": _msgtype(kind, mimetype),
        "body": text.strip() or first["originalName"],
        "filename": first["originalName"],
        "url": first["mxc"],
        "info": info,
        CRM_FIELD: crm,
    }
    if isinstance(first.get("durationMs"), int):
        info["duration"] = first["durationMs"]
    if kind == "voice":
        content[VOICE_FIELD] = {}
        content[AUDIO_FIELD] = {"duration": info.get("duration", 0), "waveform": []}
    return content


def with_durations(content: dict[str, Any], durations: list[float | None]) -> dict[str, Any]:
    """The message content with these durations (seconds) on its attachments."""
    new = dict(content)
    crm = new.get(CRM_FIELD)
    if isinstance(crm, dict) and isinstance(crm.get("attachments"), list):
        listed = [dict(a) if isinstance(a, dict) else a for a in crm["attachments"]]
        for index, duration in enumerate(durations[: len(listed)]):
            if duration is not None and isinstance(listed[index], dict):
                listed[index]["durationMs"] = round(duration * 1000)
        new[CRM_FIELD] = {**crm, "attachments": listed}
    first = durations[0] if durations else None
    if first is not None and "url" in new:
        ms = round(first * 1000)
        info = new.get("info") if isinstance(new.get("info"), dict) else {}
        new["info"] = {**info, "duration": ms}
        if isinstance(new.get(AUDIO_FIELD), dict):
            new[AUDIO_FIELD] = {**new[AUDIO_FIELD], "duration": ms}
    return new


def _txn_id(service: ChatService, user: CrmUser, client_message_id: str | None) -> str:
    if client_message_id is None:
        return service.app[MATRIX].txn_id()
    digest = hashlib.sha256(f"{user.crm_user_id}\x1f{client_message_id}".encode()).hexdigest()
    return f"crmc{digest[:40]}"


def _message_ref(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or event_id_for_message(value) is None:
        raise InvalidParam(f"{name} must be a message id")
    return event_id_for_message(value)


async def _mention_mxids(
    service: ChatService, conversation: Any, mentions: list[str] | None
) -> list[str] | None:
    """CRM user ids → their puppets' mxids; only participants may be mentioned."""
    if mentions is None:
        return None
    by_id = {u.crm_user_id: u.mxid for u in await service.participants(conversation)}
    unknown = [m for m in mentions if m not in by_id]
    if unknown:
        raise InvalidParam("mentions may name only participants of the conversation")
    return list(dict.fromkeys(by_id[m] for m in mentions))


async def _relates_to(
    service: ChatService,
    user: CrmUser,
    conversation: Any,
    reply_to: str | None,
    thread_id: str | None,
) -> tuple[dict[str, Any] | None, str | None]:
    """``m.relates_to`` for a reply and/or a thread reply, and the replied-to sender."""
    replied_sender = None
    if reply_to is not None:
        if await service.room_of_message(reply_to) != conversation.room_id:
            raise NotFound("The message replied to was not found")
        quoted = service.events.get(reply_to) or await service.fetch_event(
            conversation.room_id, reply_to, user.mxid
        )
        replied_sender = quoted.get("sender") if quoted else None
    if thread_id is None:
        return ({"m.in_reply_to": {"event_id": reply_to}} if reply_to else None), replied_sender
    root = await service.app[EVENT_INDEX].get(thread_id)
    if root is None or root.room_id != conversation.room_id:
        raise NotFound("The thread's root message was not found")
    rel: dict[str, Any] = {"rel_type": "m.thread", "event_id": thread_id}
    if reply_to is not None:
        rel.update({"is_falling_back": False, "m.in_reply_to": {"event_id": reply_to}})
    else:
        # Per the spec, a thread reply also replies (as a fallback) to the thread's latest.
        latest = await service.app[RELATIONS].store.latest_in_thread(thread_id)
        fallback = latest.event_id if latest else thread_id
        rel.update({"is_falling_back": True, "m.in_reply_to": {"event_id": fallback}})
    return rel, replied_sender


async def send(
    service: ChatService,
    user: CrmUser,
    body: Any,
    *,
    quota: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Post a message; ``body`` is REST's JSON body or the socket's payload (``SendBody``)."""
    await count(service, user, "send", quota)
    req = parse(SendBody, body)
    reply_event = _message_ref(req.replyTo, "replyTo")
    thread_root = _message_ref(req.threadId, "threadId")
    conversation = await service.conversation_for(user, req.conversationId, recent=True)
    if req.clientMessageId is not None:
        earlier = await service.client_messages.get(user.crm_user_id, req.clientMessageId)
        if earlier is not None:
            return await _replay(
                service, user, conversation, earlier.conversation_id, earlier.event_id
            )
    mentioned = await _mention_mxids(service, conversation, req.mentions)
    relation, replied_sender = await _relates_to(
        service, user, conversation, reply_event, thread_root
    )
    attachments = [a.model_dump() for a in req.attachments or []]
    return await _post(
        service, user, conversation, req.content, req.type, attachments, req.clientMessageId,
        relation=relation, mentioned=mentioned, replied_sender=replied_sender,
        thread_root=thread_root,
    )  # fmt: skip


async def send_files(
    service: ChatService,
    user: CrmUser,
    conversation_id: Any,
    content: Any,
    uploaded: list[tuple[str, bytes]],
    *,
    quota: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Upload files and post them as one message: send's limit and checks, then send's path.

    The conversation is checked before anything reaches the media repository."""
    await count(service, user, "send", quota)
    conversation_id = _conversation_id(conversation_id)
    _check_text(content)
    if len(uploaded) > MAX_ATTACHMENTS:
        raise InvalidParam(f"At most {MAX_ATTACHMENTS} attachments per message")
    # Not the two-second shortcut: the upload happens before the homeserver checks anything.
    conversation = await service.conversation_for(user, conversation_id)
    checked = check_files(service.app, uploaded)
    attachments = await store_files(service.app, user, checked)
    kind = "image" if attachments[0]["mimetype"].startswith("image/") else "file"
    return await _post(service, user, conversation, content, kind, attachments, None)


async def _post(
    service: ChatService,
    user: CrmUser,
    conversation: Conversation,
    content: str,
    kind: str,
    attachments: list[Any],
    client_message_id: str | None,
    *,
    relation: dict[str, Any] | None = None,
    mentioned: list[str] | None = None,
    replied_sender: str | None = None,
    thread_root: str | None = None,
) -> dict[str, Any]:
    """Post a checked message as the user's puppet; answers with the message object."""
    resolved = await _resolve_attachments(service, user, attachments)
    if kind == "voice" and not _is_audio(resolved[0]["mimetype"]):
        raise InvalidParam("A voice message's first attachment must be an audio file")
    body = build_content(content, kind, resolved)
    if relation is not None:
        # Fallback-free: the body is the text alone, as clients since Matrix 1.13 expect.
        body["m.relates_to"] = relation
    # Intentional mentions; a reply also mentions whom it answers (as Element does).
    mention_ids = list(mentioned or [])
    if replied_sender and replied_sender not in user.mxids and replied_sender not in mention_ids:
        mention_ids.append(replied_sender)
    if mentioned is not None or replied_sender:
        body["m.mentions"] = {"user_ids": mention_ids}
    try:
        event_id = await service.app[MATRIX].send_event(
            conversation.room_id,
            "m.room.message",
            body,
            as_user=user.mxid,
            txn_id=_txn_id(service, user, client_message_id),
        )
    except MatrixError as e:
        if e.status == 403 and "not in room" in e.message:
            raise NotFound(CONVERSATION_NOT_FOUND) from e
        if e.status == 403:
            raise Forbidden("You cannot post in this conversation") from e
        raise
    for attachment in resolved:
        # Recorded now, not when the transaction comes back, so recipients can fetch it at once.
        await service.media.posted_in(attachment["mxc"], conversation.room_id)
    if client_message_id is not None:
        row = await service.client_messages.put(
            user.crm_user_id, client_message_id, conversation.conversation_id, event_id
        )
        event_id = row.event_id
    # The transaction may have brought it back already (with the homeserver's timestamp).
    echoed = service.events.get(event_id)
    event = echoed or {
        "event_id": event_id,
        "room_id": conversation.room_id,
        "sender": user.mxid,
        "type": "m.room.message",
        "content": body,
        "origin_server_ts": int(time.time() * 1000),
    }
    # Indexed now, as the transaction will (idempotent): every listing, history page,
    # receipt and process sees it from here on.
    indexed = await index_event(
        service.app, event, notify=False, made_here=echoed is None, arrival=SENT
    )
    # Just made, and not seen back from the homeserver: nothing relates to it or pins it
    # yet, so the relations index is not asked (one database round trip less before the
    # answer). Not with a clientMessageId (the homeserver may have answered with an event
    # it made long ago, a retry after a crash), nor for a reply (its quote is looked up).
    fresh = (
        enrich.Indexed(rows=[], pins={conversation.room_id: []})
        if not echoed and client_message_id is None and relation is None
        else None
    )
    message = serialize.message_object(
        event,
        conversation.conversation_id,
        serialize.user_object(user),
        ReadState(),
        indexed.pos if indexed else None,
    )
    # The message's place in the conversation's log (a message id before the index has it).
    message["cursor"] = cursor_of(indexed.seq) if indexed else message["_id"]
    await enrich.decorate(
        service, [(conversation.room_id, event, message)], user, user.mxid, fetch_pins=False,
        prefetched=fresh,
    )  # fmt: skip
    if thread_root is not None:
        # A thread reply is no message of the main timeline: no lastMessage, no new_message
        # (its root's message_update tells the thread count, from the transaction).
        return message
    if indexed is not None:
        # Announced on the delivery log right after the index has it (realtime/log.py).
        # Should this fail or the process die, the transaction or the next process's gap
        # announcement delivers it: the index has it.
        for listener in list(service.app[LOCAL_ECHO]):
            try:
                await listener(conversation, message, indexed.seq, echoed is None)
            except Exception:
                log.exception("Announcing a sent message failed; the transaction will")
    return message


async def _replay(
    service: ChatService, user: CrmUser, conversation, earlier_conversation_id: str, event_id: str
) -> dict[str, Any]:
    if earlier_conversation_id != conversation.conversation_id:
        raise Conflict("This clientMessageId was already used in another conversation")
    event = await service.fetch_event(conversation.room_id, event_id, user.mxid)
    if event is None:
        raise NotFound("The earlier message with this clientMessageId is gone")
    message = (await service.messages_from_events(conversation, [event]))[0]
    row = await service.app[EVENT_INDEX].get(event_id)
    message["cursor"] = cursor_of(row.seq) if row is not None else message["_id"]
    return message


async def mark_read(
    service: ChatService,
    user: CrmUser,
    conversation_id: Any,
    message_id: Any = None,
    *,
    quota: dict[str, str] | None = None,
) -> list[str]:
    """Move the user's read receipt (and fully-read marker) forward; returns newly read ids."""
    await count(service, user, "mark-read", quota)
    req = parse(MarkReadBody, _given(conversationId=conversation_id, messageId=message_id))
    conversation = await service.conversation_for(user, req.conversationId)
    message_id = req.messageId
    index = service.app[EVENT_INDEX]
    if message_id is not None:
        event_id = event_id_for_message(message_id)
        target = await index.get(event_id) if event_id else None
        if target is None or target.room_id != conversation.room_id:
            raise NotFound("Message not found")
    else:
        target = await index.last_read_point(conversation.room_id)
        if target is None:
            return []
    # Everything compares by timeline position (docs/api.md, "Order"), as Synapse compares
    # receipts by stream order.
    previous = await service.app[RECEIPTS].get(conversation.room_id, user.mxid)
    if previous is not None and previous.pos >= target.pos:
        return []
    await service.app[MATRIX].set_read_markers(conversation.room_id, target.event_id, user.mxid)
    now = int(time.time() * 1000)
    await service.app[RECEIPTS].advance(
        conversation.room_id, user.mxid, target.event_id, target.pos, now
    )
    after = previous.pos if previous else 0
    newly = await index.read_between(conversation.room_id, after, target.pos)
    own = {user.mxid, user.matrix_id}
    return [message_id_for_event(e.event_id) for e in newly if e.sender not in own]
