"""The seed's JSON shapes: users, projects, conversations and messages.

Pure functions: the caller loads what they need (users, receipts, sequence numbers) in
bulk, so listing 200 conversations costs a handful of queries, not one per item.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..db.conversation import Conversation
from ..db.crm_user import CrmUser
from ..db.project import Project
from ..ids import message_id_for_event
from ..matrix.relations import thread_root

MESSAGE_TYPES = ("text", "file", "image", "link", "voice")
# Our own record of the seed fields, carried inside the Matrix event beside the standard ones.
CRM_FIELD = "com.crm.message"
_MEDIA_MSGTYPES = {"m.image": "image", "m.file": "file", "m.video": "file", "m.audio": "file"}
# Element's voice messages: m.audio with this marker (MSC3245), duration in ms in info.
VOICE_FIELD = "org.matrix.msc3245.voice"
AUDIO_FIELD = "org.matrix.msc1767.audio"
# Longest duration we take from a client or an event, in seconds (a day).
MAX_DURATION = 86400.0


def iso(ms: int | float | None) -> str | None:
    """JavaScript's Date.toJSON(): 2026-11-23T22:52:41.123Z."""
    if ms is None:
        return None
    return _iso(int(ms))


@functools.lru_cache(maxsize=65536)
def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def media_url(mxc: str | None) -> str | None:
    """The facade's authenticated download path for an mxc:// URI."""
    if not isinstance(mxc, str) or not mxc.startswith("mxc://"):
        return None
    server, _, media_id = mxc.removeprefix("mxc://").partition("/")
    if not server or not media_id or "/" in media_id:
        return None
    return f"/api/chat/media/{server}/{media_id}"


def mxc_of_url(url: str) -> str | None:
    """The mxc:// URI behind a download path we handed out (absolute URLs accepted)."""
    marker = "/api/chat/media/"
    if not isinstance(url, str) or marker not in url:
        return None
    rest = url.split(marker, 1)[1].split("?", 1)[0]
    server, _, media_id = rest.partition("/")
    if not server or not media_id or "/" in media_id:
        return None
    return f"mxc://{server}/{media_id}"


NAME_LIMIT = 128
_TAGS = re.compile(r"<[^>]{0,200}>")
_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]"
_MIMETYPE = re.compile(rf"{_TOKEN}{{0,63}}/{_TOKEN}{{0,127}}")


def clean_text(value: Any, fallback: str = "", limit: int = NAME_LIMIT) -> str:
    """A display string from another server, made safe to show: a string, no control or
    bidi-override characters, no markup, one line, at most ``limit`` characters."""
    if not isinstance(value, str):
        return fallback
    text = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch
        for ch in value[: limit * 4]
        if unicodedata.category(ch) != "Cf"
    )
    text = " ".join(_TAGS.sub("", text).split())[:limit].strip()
    return text or fallback


def clean_mimetype(value: Any) -> str:
    if isinstance(value, str) and _MIMETYPE.fullmatch(value.strip()):
        return value.strip().lower()
    return "application/octet-stream"


# Every user object the facade and the socket send is built by one of the two functions
# below, with these keys (the seed's four, and the CRM messenger's name parts and picture).
USER_FIELDS = (
    "_id",
    "name",
    "firstName",
    "lastName",
    "email",
    "avatar",
    "profileImage",
    "position",
)


def user_object(user: CrmUser) -> dict[str, Any]:
    first, last = user.first_name, user.last_name
    if first is None and last is None:  # recorded before the directory had name parts
        first, _, last = user.name.strip().partition(" ")
    picture = user.profile_image or user.avatar
    return {
        "_id": user.crm_user_id,
        "name": user.name,
        "firstName": first or "",
        "lastName": (last or "").strip(),
        "email": user.email,
        "avatar": user.avatar or picture,
        "profileImage": picture,
        "position": user.position,
    }


def matrix_user_object(
    mxid: str, profile: dict[str, Any], home_server: str | None = None
) -> dict[str, Any]:
    """A Matrix account that is no CRM user: its mxid is its id. Its profile comes from its
    own server, possibly another one: every field is cleaned before a frontend shows it.
    ``home_server``: this bridge's server, to tell guests from other servers apart."""
    server = mxid.partition(":")[2]
    name = clean_text(profile.get("displayname"), clean_text(mxid.removeprefix("@").split(":")[0]))
    avatar = media_url(profile.get("avatar_url"))
    return {
        "_id": mxid,
        "name": name,
        "firstName": name,
        "lastName": "",
        "email": None,
        "avatar": avatar,
        "profileImage": avatar,
        "position": None,
        "isGuest": home_server is not None and server != home_server,
        "homeserver": server,
    }


def with_presence(user: dict[str, Any], online: bool, last_seen_ms: float | None) -> dict[str, Any]:
    """A participant: the user object, and whether they are online and since when."""
    return {**user, "isOnline": online, "lastSeen": iso(last_seen_ms)}


def project_object(project: Project) -> dict[str, Any]:
    return {
        "_id": project.project_id,
        "name": project.name,
        "emoji": project.emoji,
        "color": project.color,
    }


@dataclass
class ReadState:
    """Receipts of one room: who read up to which timeline position, and when."""

    # reader id (CRM user id or mxid) -> (pos, origin_ts of the receipt's event, receipt ts)
    readers: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def add(self, reader: str, pos: int, event_ts: int, ts: int) -> None:
        if reader not in self.readers or self.readers[reader][0] < pos:
            self.readers[reader] = (pos, event_ts, ts)

    def read_by(self, sender_id: str, pos: int | None, origin_ts: int) -> list[dict[str, Any]]:
        """The sender, and every reader whose receipt is at or after ``pos`` in the timeline
        (by time when the message is not indexed)."""
        entries = [{"user": sender_id, "readAt": iso(origin_ts)}]
        for reader, (read_pos, event_ts, ts) in self.readers.items():
            if reader == sender_id:
                continue
            covered = read_pos >= pos if pos is not None else event_ts >= origin_ts
            if covered:
                entries.append({"user": reader, "readAt": iso(max(ts, origin_ts))})
        return entries


def duration_seconds(value: Any) -> float | None:
    """A duration in seconds as the CRM reads it, or None when absent or not sensible."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value <= MAX_DURATION or value != value:
        return None
    return round(float(value), 3)


def _event_duration(content: dict[str, Any]) -> float | None:
    """A Matrix audio/video event's duration (``info.duration``, in ms) in seconds."""
    info = content.get("info") if isinstance(content.get("info"), dict) else {}
    ms = info.get("duration")
    if ms is None and isinstance(audio := content.get(AUDIO_FIELD), dict):
        ms = audio.get("duration")
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return None
    return duration_seconds(ms / 1000)


def attachments_of(content: dict[str, Any], trusted: bool = True) -> list[dict[str, Any]]:
    """Attachment objects of a Matrix message; URLs always come from the mxc URIs.
    ``duration`` is in seconds (a float, as the CRM's page sends it), or null.
    ``trusted``: the sender is a CRM user, whose sends carry our own record (CRM_FIELD)."""
    crm = content.get(CRM_FIELD) if trusted else None
    listed = crm.get("attachments") if isinstance(crm, dict) else None
    out: list[dict[str, Any]] = []
    if isinstance(listed, list):
        for item in listed[:10]:
            if not isinstance(item, dict) or not (url := media_url(item.get("mxc"))):
                continue
            ms = item.get("durationMs")
            duration = (
                None
                if isinstance(ms, bool) or not isinstance(ms, int)
                else (duration_seconds(ms / 1000))
            )
            if duration is None and not out:
                duration = _event_duration(content)  # the first one is the event's own file
            out.append(
                {
                    "filename": str(item.get("filename") or url.rsplit("/", 1)[-1]),
                    "originalName": str(item.get("originalName") or ""),
                    "mimetype": str(item.get("mimetype") or "application/octet-stream"),
                    "size": item.get("size") if isinstance(item.get("size"), int) else 0,
                    "url": url,
                    "duration": duration,
                }
            )
        if out:
            return out
    url = media_url(content.get("url"))
    if url is None:
        return []
    info = content.get("info") if isinstance(content.get("info"), dict) else {}
    fallback = url.rsplit("/", 1)[-1]
    name = clean_text(content.get("filename"), "", 255) or clean_text(content.get("body"), "", 255)
    size = info.get("size")
    size = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 0
    return [
        {
            "filename": fallback,
            "originalName": name or fallback,
            "mimetype": clean_mimetype(info.get("mimetype")),
            "size": size,
            "url": url,
            "duration": _event_duration(content),
        }
    ]


def type_and_text(
    event_type: str, content: dict[str, Any], trusted: bool = True
) -> tuple[str, str]:
    crm = content.get(CRM_FIELD) if trusted else None
    body = content.get("body") if isinstance(content.get("body"), str) else ""
    if event_type == "m.sticker":
        kind = "image"
    elif content.get("msgtype") == "m.audio" and isinstance(content.get(VOICE_FIELD), dict):
        kind = "voice"
    else:
        kind = _MEDIA_MSGTYPES.get(str(content.get("msgtype")), "text")
    text = body
    if kind != "text" and isinstance(content.get("filename"), str) and body == content["filename"]:
        text = body
    if isinstance(crm, dict):
        if crm.get("type") in MESSAGE_TYPES:
            kind = crm["type"]
        if isinstance(crm.get("content"), str):
            text = crm["content"]
    return kind, text


def message_object(
    event: dict[str, Any],
    conversation_id: str,
    sender: dict[str, Any],
    read_state: ReadState,
    pos: int | None,
) -> dict[str, Any]:
    """``pos``: the message's timeline position (db/room_event.py), which ``readBy`` uses."""
    content = event.get("content")
    content = content if isinstance(content, dict) else {}
    # Our own record of the seed's fields is believed from CRM users' sends only; anyone
    # else's (a guest's server, say) could claim any type or attachment in it.
    trusted = not str(sender.get("_id", "@")).startswith("@")
    kind, text = type_and_text(event.get("type", ""), content, trusted)
    ts = event.get("origin_server_ts")
    ts = ts if isinstance(ts, int) and not isinstance(ts, bool) and ts >= 0 else 0
    message_id = message_id_for_event(event["event_id"])
    at = iso(ts)  # created and (until an edit) updated: formatted once
    return {
        "_id": message_id,
        "conversation": conversation_id,
        "conversationId": conversation_id,
        "sender": sender,
        "content": text,
        "type": kind,
        "attachments": attachments_of(content, trusted),
        "readBy": read_state.read_by(sender["_id"], pos, ts),
        "createdAt": at,
        "updatedAt": at,
        "matrixRoomId": event.get("room_id"),
        "eventId": event["event_id"],
        # Relations (chat/enrich.py fills them from the index).
        "edited": False,
        "editedAt": None,
        "replyTo": None,
        "mentions": [],
        "reactions": [],
        "threadId": message_id_for_event(root) if (root := thread_root(content)) else None,
        "threadCount": 0,
        "threadLastReplyAt": None,
        "isPinned": False,
    }


def conversation_object(
    conversation: Conversation,
    participants: list[dict[str, Any]],
    project: Project | None,
    last_message: dict[str, Any] | None,
    unread: int,
) -> dict[str, Any]:
    activity = iso(conversation.last_activity)  # lastActivity and updatedAt: formatted once
    return {
        "_id": conversation.conversation_id,
        "type": conversation.kind,
        "name": project.name if project else None,
        "participants": participants,
        "project": project_object(project) if project else None,
        "lastMessage": last_message,
        "lastActivity": activity,
        "unreadCount": unread,
        "createdAt": iso(conversation.created_at),
        "updatedAt": activity,
        "matrixRoomId": conversation.room_id,
    }
