"""Every write counts against the user's limit for its action, whatever the door."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..db.crm_user import CrmUser
from .ratelimit import RATE_LIMITER

if TYPE_CHECKING:
    from ..chat.service import ChatService


async def count(
    service: ChatService, user: CrmUser, route: str, quota: dict[str, str] | None
) -> None:
    """One request against the user's limit for this action (REST and socket alike)."""
    headers = await service.app[RATE_LIMITER].hit(user.crm_user_id, route)
    if quota is not None:
        quota.update(headers)
