"""``/api/users``, ``/api/projects`` and ``/api/auth/me``: who is who, for the frontend."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..chat.serialize import iso, project_object, user_object
from ..config import redis_prefix
from ..context import CONFIG, CONVERSATIONS, DISPATCHER, PROJECTS, USERS
from ..db.crm_user import CrmUser
from ..db.project import Project
from ..presence_board import PRESENCE_BOARD, PresenceBoard
from ..tasks import stop
from .contract import PEOPLE, declare
from .models import DirectoryUser
from .models import Project as ProjectModel
from .plumbing import RATE_LIMITER, authed, json_response

log = logging.getLogger("bridge.api.directory")

routes = web.RouteTableDef()


async def presence_of(app: web.Application, mxids: list[str]) -> dict[str, dict[str, Any]]:
    """Matrix presence per mxid, from the shared board only: no homeserver call inside a
    request (presence_board.py refreshes unseen users in the background)."""
    return await app[PRESENCE_BOARD].get_many(mxids)


def is_online(presence: dict[str, Any]) -> bool:
    return presence.get("presence") == "online" or bool(presence.get("currently_active"))


async def with_sockets(app: web.Application) -> set[str]:
    """CRM users with a socket open in any process: the realtime registry behind
    ``user_online``/``user_offline``. A facade that gets no transactions hears no
    ``m.presence``, so its presence cache alone could show a connected user offline."""
    from ..realtime import REALTIME

    realtime = app.get(REALTIME)
    if realtime is None:
        return set()
    try:
        return set(await realtime.registry.online())
    except Exception as e:
        log.debug("Socket registry unavailable for presence: %s", e)
        return set()


# Up to this many people, each one's sockets are looked up; beyond, the online set is read.
_ASK_EACH = 20


async def sockets_among(app: web.Application, crm_user_ids: list[str]) -> set[str]:
    """Which of these CRM users have a socket open in any process (see with_sockets)."""
    from ..realtime import REALTIME

    realtime = app.get(REALTIME)
    if realtime is None or not crm_user_ids:
        return set()
    try:
        if len(crm_user_ids) > _ASK_EACH:
            # One call for the deployment's online set, not one lookup per person.
            return set(crm_user_ids) & set(await realtime.registry.online())
        return set(await realtime.registry.connected_among(crm_user_ids))
    except Exception as e:
        log.debug("Socket registry unavailable for presence: %s", e)
        return set()


def directory_entry(
    user: CrmUser, presence: dict[str, Any], connected: bool = False
) -> dict[str, Any]:
    return {
        **user_object(user),
        "role": user.role,
        "isOnline": connected or is_online(presence),
        "lastSeen": iso(presence.get("_at") or user.updated_at),
        "matrixId": user.matrix_id,
    }


@routes.get("/api/users")
@declare(
    "The directory: every other active user, with Matrix presence",
    tags=PEOPLE,
    ok={200: (list[DirectoryUser], "Users")},
    errors=(503,),
)
@authed("users")
async def users(request: web.Request, user: CrmUser) -> web.Response:
    everyone = [u for u in await request.app[USERS].all(active_only=True)]
    others = [u for u in everyone if u.crm_user_id != user.crm_user_id]
    presence, connected = await asyncio.gather(
        presence_of(request.app, [u.mxid for u in others]), with_sockets(request.app)
    )
    return json_response(
        [directory_entry(u, presence.get(u.mxid, {}), u.crm_user_id in connected) for u in others]
    )


def _project_entry(
    project: Project, members: dict[str, CrmUser], conversation_id: str | None
) -> dict[str, Any]:
    return {
        **project_object(project),
        "description": project.description,
        "members": [user_object(members[m]) for m in project.members if m in members],
        "createdBy": project.created_by,
        "archived": project.archived,
        "conversationId": conversation_id,
        "createdAt": iso(project.created_at),
        "updatedAt": iso(project.updated_at),
    }


@routes.get("/api/projects")
@declare(
    "The user's projects",
    tags=PEOPLE,
    ok={200: (list[ProjectModel], "Projects")},
    errors=(503,),
)
@authed("projects")
async def projects(request: web.Request, user: CrmUser) -> web.Response:
    """Four queries whatever the number of projects."""
    app = request.app
    found = await app[PROJECTS].of_member(user.crm_user_id)
    mine = sorted((p for p in found if not p.archived), key=lambda p: p.name)
    members = await app[USERS].get_many(sorted({m for p in mine for m in p.members}))
    conversations = await app[CONVERSATIONS].ids_by_room([p.room_id for p in mine if p.room_id])
    return json_response(
        [_project_entry(p, members, conversations.get(p.room_id or "")) for p in mine]
    )


@routes.get("/api/auth/me")
@declare(
    "The authenticated user",
    tags=PEOPLE,
    ok={200: (DirectoryUser, "The user")},
    errors=(503,),
)
@authed("me")
async def me(request: web.Request, user: CrmUser) -> web.Response:
    presence, connected = await asyncio.gather(
        presence_of(request.app, [user.mxid]), with_sockets(request.app)
    )
    return json_response(directory_entry(user, presence[user.mxid], user.crm_user_id in connected))


def setup(app: web.Application) -> None:
    app[PRESENCE_BOARD] = PresenceBoard(
        app, redis_prefix(app[CONFIG]), lambda: app[RATE_LIMITER].redis
    )

    async def refresh_ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(app[PRESENCE_BOARD].refresh(), name="presence-refresh")
        yield
        await stop(task)

    app.cleanup_ctx.append(refresh_ctx)

    async def on_presence(event: dict[str, Any]) -> None:
        if event.get("type") != "m.presence" or not isinstance(event.get("content"), dict):
            return
        if sender := event.get("sender"):
            await app[PRESENCE_BOARD].put(sender, event["content"])

    app[DISPATCHER].on_ephemeral(on_presence)
    app.add_routes(routes)
