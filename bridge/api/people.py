"""``/api/chat/online-users``: who of the people the user talks with is online now.

Presence is Matrix's, the same as ``/api/users`` shows (the shared board: pushed
``m.presence``, and the background refresh of users it has not seen), for CRM users and
Matrix-only members alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..chat.serialize import iso
from ..context import IDS, ROOM_MEMBERS, USERS
from ..db.crm_user import CrmUser
from .models import OnlineUser
from .routes_directory import is_online, presence_of

if TYPE_CHECKING:
    from ..chat.service import ChatService


async def online_users(service: ChatService, user: CrmUser) -> list[dict[str, Any]]:
    app = service.app
    skip = {app[IDS].bot_mxid, *user.mxids}
    mxids = sorted(m for m in await app[ROOM_MEMBERS].co_members(user.mxid) if m not in skip)
    users, presence = await app[USERS].get_by_mxids(mxids), await presence_of(app, mxids)
    # One entry per person: a CRM user counts as online through their puppet or their
    # linked Matrix account, whichever was seen last.
    people: dict[str, tuple[dict[str, Any], float | None]] = {}
    for mxid in mxids:
        state = presence.get(mxid, {})
        crm = users.get(mxid)
        if not is_online(state) or (crm is not None and not crm.active):
            continue
        if crm is not None and crm.crm_user_id == user.crm_user_id:
            continue
        at = state.get("_at") or (crm.updated_at if crm else None)
        obj = await service.user_object(crm or mxid)
        earlier = people.get(obj["_id"])
        if earlier is None or (at or 0) > (earlier[1] or 0):
            people[obj["_id"]] = (obj, at)
    out = [
        OnlineUser(_id=obj["_id"], name=obj["name"], avatar=obj["avatar"], lastSeen=iso(at))
        for obj, at in people.values()
    ]
    return [o.model_dump(by_alias=True) for o in sorted(out, key=lambda o: o.name.lower())]
