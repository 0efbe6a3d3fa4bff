"""Taking access away: the directory tells the real-time side the moment it applies it.

A member removed from a room (kicked, or left on deactivation), a deactivated user and a
user moved to another company (out of the old ``company_<id>`` room) must lose their open
sockets' view at once, not when the homeserver's transaction brings the
leave back (that path still runs, as a second route). Listeners are registered by the
real-time side; a failing listener is logged and never undoes the directory's change.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("bridge.revocation")

MemberLeft = Callable[[str, str], Awaitable[None]]
UserDeactivated = Callable[[str], Awaitable[None]]
CompanyLeft = Callable[[str, str], Awaitable[None]]


class Revocations:
    def __init__(self) -> None:
        self.on_member_left: list[MemberLeft] = []
        self.on_user_deactivated: list[UserDeactivated] = []
        self.on_company_left: list[CompanyLeft] = []

    async def member_left(self, room_id: str, mxid: str) -> None:
        """``mxid`` no longer takes part in ``room_id`` (already recorded in room_member)."""
        for listener in list(self.on_member_left):
            try:
                await listener(room_id, mxid)
            except Exception:
                log.exception("Revoking %s's access to %s failed", mxid, room_id)

    async def user_deactivated(self, crm_user_id: str) -> None:
        """The CRM user is recorded inactive."""
        for listener in list(self.on_user_deactivated):
            try:
                await listener(crm_user_id)
            except Exception:
                log.exception("Revoking the sockets of deactivated %s failed", crm_user_id)

    async def company_left(self, crm_user_id: str, company_id: str) -> None:
        """The CRM user's directory entry no longer names ``company_id`` (recorded)."""
        for listener in list(self.on_company_left):
            try:
                await listener(crm_user_id, company_id)
            except Exception:
                log.exception("Taking %s out of company %s failed", crm_user_id, company_id)
