"""Matrix-side drift: when someone changes a project room from Element, put it back.

Membership seen in transactions keeps ``room_member`` current. In project rooms, changes the
bridge did not make itself (a kicked puppet, edited power levels, a renamed room) are
recorded as the room's current state and a repair of that room is scheduled at once; the
repair runs in the background so the transaction is acknowledged quickly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..context import DISPATCHER, FEDERATION, IDS, PROJECTS, ROOM_MEMBERS
from ..federation import ACL_EVENT
from ..matrix.dispatcher import Event
from ..tasks import stop
from . import operations
from .rooms import LINK_EVENT, normalize_acl, normalize_power_levels

log = logging.getLogger("bridge.crm.drift")

# state event type -> (key in project.applied, how to read the value from the content)
_WATCHED: dict[str, tuple[str, Any]] = {
    "m.room.name": ("name", lambda c: c.get("name", "")),
    "m.room.topic": ("topic", lambda c: c.get("topic", "")),
    "m.room.power_levels": ("power_levels", normalize_power_levels),
    LINK_EVENT: ("link", lambda c: {k: c.get(k) for k in ("id", "emoji", "color")}),
    ACL_EVENT: ("server_acl", normalize_acl),
}


class DriftRepair:
    """Repairs scheduled project rooms one after another, coalescing repeated requests."""

    def __init__(self, app: web.Application, delay: float = 0.2) -> None:
        self.app = app
        self.delay = delay
        self.pending: set[str] = set()
        self.task: asyncio.Task[None] | None = None
        self.repairs = 0
        # Rooms known to be project rooms (a room never stops being one): the bridge's own
        # membership changes there need no database lookup at all.
        self.project_rooms: set[str] = set()

    def schedule(self, project_id: str) -> None:
        self.pending.add(project_id)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        await asyncio.sleep(self.delay)  # several events of one Element action, one repair
        while self.pending:
            project_id = self.pending.pop()
            try:
                await operations.reconcile_project(self.app, project_id)
                self.repairs += 1
            except Exception:
                log.exception("Repairing project %s failed; the next sync retries", project_id)

    async def close(self) -> None:
        if self.task and not self.task.done():
            await stop(self.task)


DRIFT = web.AppKey("crm_drift", DriftRepair)


def _log_unlisted(
    app: web.Application,
    guests: list[str],
    sender: str,
    target: str,
    content: dict[str, Any],
    project_id: str,
) -> None:
    """Say who brought a remote user the CRM does not list into a project room."""
    membership = content.get("membership")
    policy = app[FEDERATION]
    if membership not in ("invite", "join") or not policy.is_remote(target) or target in guests:
        return
    if policy.members_may_invite and policy.is_allowed(target):
        return
    who = sender if membership == "invite" else f"{target} (joined by themselves)"
    log.warning(
        "%s brought %s into project %s, who is not a listed guest; drift repair removes them",
        who, target, project_id,
    )  # fmt: skip


def setup(app: web.Application) -> None:
    app[DRIFT] = DriftRepair(app)

    async def on_event(event: Event) -> None:
        kind, state_key = event.get("type"), event.get("state_key")
        if state_key is None or (kind != "m.room.member" and kind not in _WATCHED):
            return
        room_id, sender = event.get("room_id", ""), event.get("sender", "")
        content = event.get("content") or {}
        ids, repair = app[IDS], app[DRIFT]
        ours = sender == ids.bot_mxid or ids.crm_user_id_of(sender) is not None
        if kind == "m.room.member" and ours and room_id in repair.project_rooms:
            return  # the engine recorded it when it made the change
        project = await app[PROJECTS].get_by_room(room_id)
        if project is not None:
            repair.project_rooms.add(room_id)
        if kind == "m.room.member":
            # In project rooms the engine records its own (bot and puppet) changes as it
            # makes them; replaying them here could let a late event undo a newer record.
            if project is None or not ours:
                await app[ROOM_MEMBERS].set(room_id, state_key, content.get("membership", "leave"))
            # Someone leaving on their own (a linked account) is their choice; a full sync
            # still invites them again, as the CRM says they belong.
            left_alone = sender == state_key and content.get("membership") == "leave"
            if project is not None and not ours and not left_alone:
                _log_unlisted(app, project.guests, sender, state_key, content, project.project_id)
                repair.schedule(project.project_id)
            return
        if project is None or sender == ids.bot_mxid or state_key != "":
            return
        key, read = _WATCHED[kind]
        applied = dict(project.applied)
        applied[key] = read(content)
        await app[PROJECTS].save_applied(project.project_id, project.room_id, applied)
        log.info("%s changed %s in project %s; restoring", sender, kind, project.project_id)
        repair.schedule(project.project_id)

    async def drift_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await app[DRIFT].close()

    app[DISPATCHER].on_timeline(on_event)
    app.cleanup_ctx.append(drift_ctx)
