"""Voice notes: the duration the CRM's page measures after one played.

``POST /api/chat/update-duration`` sets an attachment's duration on a message the caller
sent. Matrix stores everything, so the value is an ``m.replace`` edit of the message by the
sender's puppet: ``m.new_content`` is the message as it reads now with the duration set
(``info.duration``, MSC1767's audio block and the CRM field's ``durationMs``, all in ms).
Every read applies the latest edit (chat/enrich.py), so REST history, search and the
``message_update`` the edit brings show it; Element shows the new length. An edit that
only sets a duration does not mark the message ``edited``. No table of our own: nothing
to lose, to migrate or to keep in step with the homeserver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..chat.serialize import CRM_FIELD
from ..db.crm_user import CrmUser
from ..errors import Forbidden, InvalidParam
from .actions import edited_content, locate, message_of, replacement, send_edit
from .messaging import with_durations
from .models import UpdateDurationBody, UpdateDurationResult, parse
from .quota import count

if TYPE_CHECKING:
    from ..chat.service import ChatService

# Durations closer than this (seconds) are the same: a page that reports each play sends
# nothing new to Matrix.
SAME = 0.01
# In the edit's outer content: this edit only sets durations (chat/enrich.py).
DURATION_EDIT = "duration"


async def update_duration(
    service: ChatService, user: CrmUser, body: Any, *, quota: dict[str, str] | None = None
) -> dict[str, Any]:
    await count(service, user, "update-duration", quota)
    req = parse(UpdateDurationBody, body)
    conversation, event = await locate(service, user, req.messageId, req.conversationId)
    if event["sender"] != user.mxid:
        if event["sender"] in user.mxids:
            # An edit counts only from the original's sender (Matrix, and enrich.py): one
            # from the puppet on the linked account's message would be ignored everywhere.
            raise Forbidden(
                "This message was sent from your linked Matrix account: its duration can "
                "only be set from there"
            )
        raise Forbidden("Only the sender may set a message's duration")
    current = await message_of(service, user, conversation, event)
    attachments = current.get("attachments") or []
    if req.attachmentIndex >= len(attachments):
        raise InvalidParam("attachmentIndex names no attachment of this message")
    duration = round(req.duration, 3)
    durations = [a.get("duration") for a in attachments]
    before = durations[req.attachmentIndex]
    changed = before is None or abs(before - duration) >= SAME
    if changed:
        durations[req.attachmentIndex] = duration
        new = with_durations(edited_content(event["content"], current["content"]), durations)
        content = replacement(event["event_id"], new, new.get("body", ""), "m.audio")
        content[CRM_FIELD] = {"edit": DURATION_EDIT}
        await send_edit(service, user, conversation, content)
    return UpdateDurationResult(
        success=True,
        messageId=req.messageId,
        attachmentIndex=req.attachmentIndex,
        duration=duration if changed else float(before),
        changed=changed,
    ).model_dump()
