"""The crm side of the bridge: the CRM directory kept in sync with Matrix."""

from __future__ import annotations

from aiohttp import web

from ..context import ALIAS_QUERY, IDS, PROJECTS, USER_QUERY
from . import admin_api, drift, operations, pull
from .operations import DIRECTORY
from .puppets import ensure_puppet
from .reconcile import Directory


def setup(app: web.Application) -> None:
    """Attach this side's routes, event handlers and background tasks to the app."""
    app[DIRECTORY] = Directory(app)

    async def user_query(mxid: str) -> bool:
        # The homeserver asks before it lets anyone reference a puppet it has not seen.
        user = await operations.user_exists(app, mxid)
        if user is None:
            return False
        await ensure_puppet(app, user)
        return True

    async def alias_query(alias: str) -> bool:
        project_id = app[IDS].project_id_of(alias)
        project = await app[PROJECTS].get(project_id) if project_id is not None else None
        # While the engine runs (in any process), it is the one creating rooms (and asking
        # for this alias): waiting for it here would stall the homeserver's query.
        if project is None or await app[DIRECTORY].lock.busy():
            return False
        await operations.reconcile_project(app, project.project_id)
        return True

    app[USER_QUERY] = user_query
    app[ALIAS_QUERY] = alias_query
    admin_api.setup(app)
    drift.setup(app)
    pull.setup(app)
