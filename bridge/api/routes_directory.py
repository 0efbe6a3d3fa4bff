"""``/api/users``, ``/api/projects`` and ``/api/auth/me``: who is who, for the frontend."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from ..context import CONVERSATIONS, DISPATCHER, MATRIX, PROJECTS, USERS
from ..db.crm_user import CrmUser
from ..db.project import Project
from .plumbing import authed, json_response
from .serialize import iso, project_object, user_object

log = logging.getLogger("bridge.api.directory")

routes = web.RouteTableDef()
PRESENCE = web.AppKey("presence", dict)
_PRESENCE_TTL = 30.0


async def presence_of(app: web.Application, mxids: list[str]) -> dict[str, dict[str, Any]]:
    """Matrix presence per mxid: pushed m.presence first, then asked (briefly cached)."""
    cache: dict[str, tuple[float, dict[str, Any]]] = app[PRESENCE]
    now = time.monotonic()
    missing = [m for m in mxids if m not in cache or now - cache[m][0] > _PRESENCE_TTL]
    limit = asyncio.Semaphore(8)

    async def ask(mxid: str) -> None:
        async with limit:
            try:
                state = await app[MATRIX].get_presence(mxid)
            except Exception as e:
                log.debug("No presence for %s: %s", mxid, e)
                state = {}
        ago = state.get("last_active_ago")
        state["_at"] = time.time() * 1000 - ago if isinstance(ago, int | float) else None
        cache[mxid] = (time.monotonic(), state)

    await asyncio.gather(*(ask(m) for m in missing))
    return {m: cache[m][1] for m in mxids}


def is_online(presence: dict[str, Any]) -> bool:
    return presence.get("presence") == "online" or bool(presence.get("currently_active"))


def directory_entry(user: CrmUser, presence: dict[str, Any]) -> dict[str, Any]:
    return {
        **user_object(user),
        "role": user.role,
        "isOnline": is_online(presence),
        "lastSeen": iso(presence.get("_at") or user.updated_at),
        "matrixId": user.matrix_id,
    }


@routes.get("/api/users")
@authed("users")
async def users(request: web.Request, user: CrmUser) -> web.Response:
    everyone = [u for u in await request.app[USERS].all(active_only=True)]
    others = [u for u in everyone if u.crm_user_id != user.crm_user_id]
    presence = await presence_of(request.app, [u.mxid for u in others])
    return json_response([directory_entry(u, presence.get(u.mxid, {})) for u in others])


async def _project_entry(app: web.Application, project: Project) -> dict[str, Any]:
    members = await app[USERS].get_many(project.members)
    conversation = (
        await app[CONVERSATIONS].get_by_room(project.room_id) if project.room_id else None
    )
    return {
        **project_object(project),
        "description": project.description,
        "members": [user_object(members[m]) for m in project.members if m in members],
        "createdBy": project.created_by,
        "archived": project.archived,
        "conversationId": conversation.conversation_id if conversation else None,
        "createdAt": iso(project.created_at),
        "updatedAt": iso(project.updated_at),
    }


@routes.get("/api/projects")
@authed("projects")
async def projects(request: web.Request, user: CrmUser) -> web.Response:
    store = request.app[PROJECTS]
    found = [await store.get(pid) for pid in await store.projects_of(user.crm_user_id)]
    mine = sorted((p for p in found if p and not p.archived), key=lambda p: p.name)
    return json_response([await _project_entry(request.app, p) for p in mine])


@routes.get("/api/auth/me")
@authed("me")
async def me(request: web.Request, user: CrmUser) -> web.Response:
    presence = await presence_of(request.app, [user.mxid])
    return json_response(directory_entry(user, presence[user.mxid]))


def setup(app: web.Application) -> None:
    app[PRESENCE] = {}

    async def on_presence(event: dict[str, Any]) -> None:
        if event.get("type") != "m.presence" or not isinstance(event.get("content"), dict):
            return
        content = dict(event["content"])
        ago = content.get("last_active_ago")
        content["_at"] = time.time() * 1000 - ago if isinstance(ago, int | float) else None
        if sender := event.get("sender"):
            app[PRESENCE][sender] = (time.monotonic(), content)

    app[DISPATCHER].on_ephemeral(on_presence)
    app.add_routes(routes)
