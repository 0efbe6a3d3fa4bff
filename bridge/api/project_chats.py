"""Project conversations as the CRM messenger asks for them.

Membership comes from the CRM directory (``crm/``), never from the chat side: these routes
only make what the directory decided true for the caller, or ask the directory to look
again (a pull, where pull mode is configured).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..context import CONFIG, MATRIX, PROJECTS, ROOM_MEMBERS
from ..crm.pull import pull_once
from ..db.conversation import PROJECT
from ..db.crm_user import CrmUser
from ..errors import Conflict, Forbidden
from ..matrix.homeserver import MatrixError
from ..tasks import stop
from .models import (
    AddMemberBody,
    DirectoryPullResult,
    EnsureProjectChatsResult,
    parse,
)

if TYPE_CHECKING:
    from ..chat.service import ChatService

log = logging.getLogger("bridge.api.project_chats")

# CRM roles that may ask the directory to look again (the CRM UI's admin tools).
DIRECTORY_ROLES = ("admin", "manager")
FROM_DIRECTORY = (
    "Project membership comes from the CRM directory: change it in the CRM, and the chat "
    "follows at the next sync"
)


async def ensure_project_chats(service: ChatService, user: CrmUser) -> dict[str, Any]:
    """Join the caller to every project room the directory says they belong to but they
    are not in (a join lost to an outage); never creates a project or a room."""
    app = service.app
    projects = [
        p for p in await app[PROJECTS].of_member(user.crm_user_id) if p.room_id and not p.archived
    ]
    repaired = 0
    for project in projects:
        room_id = project.room_id
        assert room_id is not None
        if await app[ROOM_MEMBERS].get(room_id, user.mxid) == "join":
            continue
        try:
            await _join(service, room_id, user.mxid)
        except MatrixError as e:
            # The next sync repairs it; the page's list is not refused for one room.
            log.warning("Cannot join %s to the project room %s: %s", user.mxid, room_id, e)
            continue
        repaired += 1
    joined = await app[ROOM_MEMBERS].joined_rooms(user.mxid)
    rooms = {p.room_id for p in projects}
    counted = sum(1 for r in joined if r in rooms)
    return EnsureProjectChatsResult(
        success=True, conversations=counted, repaired=repaired
    ).model_dump()


async def _join(service: ChatService, room_id: str, mxid: str) -> None:
    matrix = service.app[MATRIX]
    try:
        await matrix.join(room_id, as_user=mxid)
    except MatrixError as e:
        if e.status != 403:
            raise
        # Not invited (any more): the bot invites, as the directory does.
        await matrix.invite(room_id, mxid)  # type: ignore[arg-type]
        await matrix.join(room_id, as_user=mxid)
    await service.app[ROOM_MEMBERS].set(room_id, mxid, "join")


async def project_groups(service: ChatService, user: CrmUser) -> dict[str, Any]:
    listed = await service.conversations_for(user, kind=PROJECT)
    return {"success": True, "conversations": listed}  # described by models.ProjectGroups


# The pull a request started in this process, if any (stopped with the app).
PULL_REQUESTS = web.AppKey("directory_pull_requests", dict)


async def request_pull(
    service: ChatService, user: CrmUser, project_id: str | None = None, body: Any = None
) -> dict[str, Any]:
    """The CRM UI's sync and add-member tools: a CRM admin or manager asks the directory
    to pull the CRM again; the chat side never changes membership on its own."""
    if user.role not in DIRECTORY_ROLES:
        raise Forbidden("Only a CRM admin or manager may sync project chats")
    if body is not None:
        req = parse(AddMemberBody, body)
        project_id = str(req.projectId)
    app = service.app
    url = app[CONFIG].get("sync.pull_url")
    if not url:
        raise Conflict(FROM_DIRECTORY, errcode="M_DIRECTORY_MANAGED")
    # One pull at a time per process; a request meanwhile joins the running one.
    pulls = app[PULL_REQUESTS]
    running = pulls.get("task")
    if running is None or running.done():
        task = asyncio.create_task(pull_once(app, url, app[CONFIG].get("sync.pull_token")))
        task.add_done_callback(_log_pull)
        pulls["task"] = task
    return DirectoryPullResult(
        success=True,
        message="The CRM directory is being pulled; membership follows from it",
        projectId=project_id,
    ).model_dump()


def _log_pull(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    if (e := task.exception()) is not None:
        log.warning("Pulling the CRM directory on request failed: %s", type(e).__name__)
    else:
        log.info("Pulled the CRM directory on request: %s", task.result().get("writes"))


def setup(app: web.Application) -> None:
    app[PULL_REQUESTS] = {}

    async def pulls_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        if (task := app[PULL_REQUESTS].get("task")) is not None:
            await stop(task)

    app.cleanup_ctx.append(pulls_ctx)
