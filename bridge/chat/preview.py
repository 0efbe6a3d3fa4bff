"""The last message of a conversation, kept in its index row (``conversation.last_preview``).

A cache, not a second history: the sender, type, time and the fields of the content that a
listing shows, strings cut to ``PREVIEW_CHARS``. With it, ``GET /conversations`` needs no
homeserver call on any process. A redacted message keeps its row with empty content, as
the homeserver serves it.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from .serialize import CRM_FIELD

PREVIEW_CHARS = 2000
_KEPT = ("msgtype", "body", "filename", "url", "m.relates_to")


def _cut(value: Any) -> Any:
    return value[:PREVIEW_CHARS] if isinstance(value, str) else value


def _bounded(content: dict[str, Any]) -> dict[str, Any]:
    out = {k: _cut(content[k]) for k in _KEPT if k in content}
    info = content.get("info")
    if isinstance(info, dict):
        out["info"] = {k: info[k] for k in ("mimetype", "size") if k in info}
    crm = content.get(CRM_FIELD)
    if isinstance(crm, dict):
        attachments = crm.get("attachments")
        out[CRM_FIELD] = {
            "type": crm.get("type"),
            "content": _cut(crm.get("content")),
            "attachments": attachments[:10] if isinstance(attachments, list) else [],
        }
    new = content.get("m.new_content")
    if isinstance(new, dict):
        out["m.new_content"] = _bounded(new)
    return out


def preview_of(event: dict[str, Any]) -> str:
    content = event.get("content")
    return json.dumps(
        {
            "sender": event.get("sender"),
            "type": event.get("type"),
            "ts": int(event.get("origin_server_ts") or 0),
            "content": _bounded(content) if isinstance(content, dict) else {},
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def redacted(preview: str | None) -> str | None:
    """The same preview with its content gone (None stays None: nothing to show)."""
    if preview is None:
        return None
    data = json.loads(preview)
    data["content"] = {}
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def event_of(preview: str | None, event_id: str | None, room_id: str) -> dict[str, Any] | None:
    """The event a listing renders, or None when the row holds no preview."""
    if preview is None or event_id is None:
        return None
    try:
        data = orjson.loads(preview)  # once per conversation per listing: the fast decoder
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("sender"), str):
        return None
    return {
        "event_id": event_id,
        "room_id": room_id,
        "sender": data["sender"],
        "type": data.get("type") or "m.room.message",
        "content": data.get("content") if isinstance(data.get("content"), dict) else {},
        "origin_server_ts": int(data.get("ts") or 0),
    }
