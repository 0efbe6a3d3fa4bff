"""``GET /api/chat/employees``: the people a user may start a chat with.

The active CRM users of the caller's company (all active users when the directory names no
company for the caller), minus the caller, answered from the index in one query.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..chat import serialize
from ..context import USERS
from ..db.crm_user import CrmUser
from .models import EmployeesQuery, parse

if TYPE_CHECKING:
    from ..chat.service import ChatService


async def employees(service: ChatService, user: CrmUser, query: Any) -> list[dict[str, Any]]:
    req = parse(EmployeesQuery, dict(query))
    words = (req.q or "").split()[:8]
    found = await service.app[USERS].employees(user.company_id, user.crm_user_id, words, req.limit)
    people = {u.crm_user_id: set(u.mxids) for u in found}
    online = await service.online(people) if service.online is not None and people else {}
    return [
        serialize.with_presence(serialize.user_object(u), *online.get(u.crm_user_id, (False, None)))
        for u in found
    ]
