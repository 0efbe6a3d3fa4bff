"""What the admin API, the CLI, pull mode and drift repair ask of the engine.

Each operation plans and applies under the engine lock. Single-entity operations plan only
what the entity touches: a user and the rooms of their projects, or one project room.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web

from ..context import IDS, PROJECTS, USERS
from ..db.crm_user import CrmUser
from ..db.project import Project
from ..errors import NotFound
from .plan import Plan
from .puppets import spec_of
from .reconcile import Directory, project_spec_of
from .snapshot import InvalidSnapshot, ProjectSpec, Snapshot, UserSpec
from .writer import Progress

DIRECTORY = web.AppKey("crm_directory", Directory)


async def sync(
    app: web.Application,
    snapshot: Snapshot,
    *,
    dry_run: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    engine = app[DIRECTORY]
    async with engine.lock:
        plan = await engine.plan_snapshot(snapshot, force)
        if dry_run:
            return _dry(plan)
        return await engine.apply(plan, progress)


def _dry(plan: Plan) -> dict[str, Any]:
    return {
        "dryRun": True,
        "plan": plan.summary(),
        "writes": {"planned": plan.writes()},
        "withheld": plan.withheld,
    }


async def _user_scope(
    app: web.Application, specs: dict[str, UserSpec], project_ids: set[str]
) -> tuple[dict[str, UserSpec], dict[str, CrmUser], dict[str, Project]]:
    projects = {pid: p for pid in project_ids if (p := await app[PROJECTS].get(pid))}
    wanted = set(specs) | {m for p in projects.values() for m in p.members}
    db_users = await app[USERS].get_many(sorted(wanted))
    all_users = {uid: spec_of(u) for uid, u in db_users.items()} | specs
    return all_users, db_users, projects


async def put_user(
    app: web.Application, spec: UserSpec, *, dry_run: bool = False
) -> dict[str, Any]:
    engine = app[DIRECTORY]
    async with engine.lock:
        # Role, activity and linked account show in the rooms of the user's projects;
        # planning an unchanged room costs no write, so they are always planned.
        project_ids = set(await app[PROJECTS].projects_of(spec.crm_user_id))
        all_users, db_users, projects = await _user_scope(
            app, {spec.crm_user_id: spec}, project_ids
        )
        plan = await engine._plan(
            {spec.crm_user_id: spec},
            all_users,
            {pid: project_spec_of(p) for pid, p in projects.items()},
            db_users,
            projects,
        )
        return _dry(plan) if dry_run else await engine.apply(plan)


async def delete_user(app: web.Application, crm_user_id: str) -> dict[str, Any]:
    user = await app[USERS].get(crm_user_id)
    if user is None:
        raise NotFound(f"No CRM user {crm_user_id!r}")
    return await put_user(app, replace(spec_of(user), active=False))


async def put_project(
    app: web.Application, spec: ProjectSpec, *, dry_run: bool = False
) -> dict[str, Any]:
    engine = app[DIRECTORY]
    async with engine.lock:
        db_users = await app[USERS].get_many(sorted(spec.members))
        unknown = [m for m in spec.members if m not in db_users]
        if unknown:
            raise InvalidSnapshot(
                "The project names members the bridge does not know",
                extra={"problems": [f"members: unknown user {m!r}" for m in unknown]},
            )
        old = await app[PROJECTS].get(spec.project_id)
        db_projects = {spec.project_id: old} if old is not None else {}
        if old is not None:
            for uid, u in (await app[USERS].get_many(old.members)).items():
                db_users.setdefault(uid, u)
        all_users = {uid: spec_of(u) for uid, u in db_users.items()}
        plan = await engine._plan({}, all_users, {spec.project_id: spec}, db_users, db_projects)
        return _dry(plan) if dry_run else await engine.apply(plan)


async def delete_project(app: web.Application, project_id: str) -> dict[str, Any]:
    project = await app[PROJECTS].get(project_id)
    if project is None:
        raise NotFound(f"No CRM project {project_id!r}")
    return await put_project(app, replace(project_spec_of(project), archived=True))


async def reconcile_project(app: web.Application, project_id: str) -> dict[str, Any] | None:
    """Make one room match the CRM again (drift repair); None for unknown projects."""
    project = await app[PROJECTS].get(project_id)
    if project is None:
        return None
    return await put_project(app, project_spec_of(project))


async def user_exists(app: web.Application, mxid: str) -> CrmUser | None:
    crm_user_id = app[IDS].crm_user_id_of(mxid)
    return await app[USERS].get(crm_user_id) if crm_user_id is not None else None
