"""The admin API the CRM backend calls: ``/api/admin/v1`` behind a service token.

Errors go through the shared error middleware (``{"message", "errcode"}``); a missing or
wrong token is a 401, compared in constant time. A full sync can run as a job
(``?wait=false``) so the CLI can draw progress while it runs. The job's status lives in the
database (db/sync_job.py): any process answers the poll, whichever one runs the job.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from typing import Any

from aiohttp import web

from .. import safejson
from ..context import CONFIG, DATABASE, IDS, PROJECTS, USERS
from ..db.crm_user import CrmUser
from ..db.project import Project
from ..db.sync_job import SyncJob, SyncJobStore
from ..errors import MissingToken, NotFound, UnknownToken, read_json
from . import operations
from .snapshot import InvalidSnapshot, parse_project, parse_snapshot, parse_user

log = logging.getLogger("bridge.crm.admin_api")

PREFIX = "/api/admin/v1"
# This process's running jobs, cancelled at shutdown (at most one runs at a time per engine
# lock; the set empties as they finish).
JOBS = web.AppKey("crm_sync_jobs", set)
_KEPT_JOBS = 20
# How often a running job writes its progress (and heartbeat); a job not written for
# _LOST_AFTER_S is reported failed: its process stopped.
_HEARTBEAT_S = 0.5
_LOST_AFTER_S = 30.0
_STALE_AFTER_S = 86400.0
routes = web.RouteTableDef()


def check_token(request: web.Request) -> None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or not header[7:].strip():
        raise MissingToken("The admin API needs 'Authorization: Bearer <admin_api.token>'")
    expected = str(request.app[CONFIG]["admin_api.token"])
    if not hmac.compare_digest(header[7:].strip().encode(), expected.encode()):
        raise UnknownToken("The admin token is not valid")


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")


def roles(app: web.Application) -> list[str]:
    return [str(role) for role in app[CONFIG]["power_levels"]]


def bridge_accounts(app: web.Application) -> str:
    """Accounts the bridge itself runs (puppets and the bot): never a person's linked one."""
    ids = app[IDS]
    return f"(?:{ids.user_namespace_regex()})|{re.escape(ids.bot_mxid)}"


def user_json(app: web.Application, user: CrmUser) -> dict[str, Any]:
    return {
        "id": user.crm_user_id, "name": user.name, "email": user.email, "avatar": user.avatar,
        "role": user.role, "active": user.active, "matrixId": user.matrix_id, "mxid": user.mxid,
        "firstName": user.first_name, "lastName": user.last_name, "position": user.position,
        "profileImage": user.profile_image, "companyId": user.company_id,
    }  # fmt: skip


def project_json(app: web.Application, project: Project) -> dict[str, Any]:
    return {
        "id": project.project_id, "name": project.name, "description": project.description,
        "emoji": project.emoji, "color": project.color, "members": project.members,
        "createdBy": project.created_by, "archived": project.archived,
        "roomId": project.room_id, "alias": app[IDS].project_alias(project.project_id),
    }  # fmt: skip


def _raise_problems(problems: list[str], what: str) -> None:
    if problems:
        raise InvalidSnapshot(f"The {what} is invalid", extra={"problems": problems})


@routes.put(PREFIX + "/users/{crm_user_id}")
async def put_user(request: web.Request) -> web.Response:
    check_token(request)
    app, crm_user_id = request.app, request.match_info["crm_user_id"]
    problems: list[str] = []
    spec = parse_user(
        await read_json(request), "user", problems, roles(app),
        crm_user_id=crm_user_id, puppet_domain_regex=bridge_accounts(app),
    )  # fmt: skip
    if spec and spec.matrix_id:
        holder = await app[USERS].get_by_mxid(spec.matrix_id)
        if holder and holder.crm_user_id != crm_user_id:
            problems.append(f"user.matrixId: already linked to user {holder.crm_user_id!r}")
    _raise_problems(problems, "user")
    assert spec is not None
    result = await operations.put_user(app, spec, dry_run=_flag(request, "dryRun"))
    user = await app[USERS].get(crm_user_id)
    return web.json_response({"user": user_json(app, user) if user else None, **result})


@routes.get(PREFIX + "/users/{crm_user_id}")
async def get_user(request: web.Request) -> web.Response:
    check_token(request)
    user = await request.app[USERS].get(request.match_info["crm_user_id"])
    if user is None:
        raise NotFound("No such CRM user")
    return web.json_response(user_json(request.app, user))


@routes.delete(PREFIX + "/users/{crm_user_id}")
async def delete_user(request: web.Request) -> web.Response:
    check_token(request)
    app, crm_user_id = request.app, request.match_info["crm_user_id"]
    result = await operations.delete_user(app, crm_user_id)
    user = await app[USERS].get(crm_user_id)
    return web.json_response({"user": user_json(app, user) if user else None, **result})


@routes.put(PREFIX + "/projects/{project_id}")
async def put_project(request: web.Request) -> web.Response:
    check_token(request)
    app, project_id = request.app, request.match_info["project_id"]
    problems: list[str] = []
    spec = parse_project(await read_json(request), "project", problems, None, project_id=project_id)
    _raise_problems(problems, "project")
    assert spec is not None
    result = await operations.put_project(app, spec, dry_run=_flag(request, "dryRun"))
    project = await app[PROJECTS].get(project_id)
    return web.json_response({"project": project_json(app, project) if project else None, **result})


@routes.get(PREFIX + "/projects/{project_id}")
async def get_project(request: web.Request) -> web.Response:
    check_token(request)
    project = await request.app[PROJECTS].get(request.match_info["project_id"])
    if project is None:
        raise NotFound("No such CRM project")
    return web.json_response(project_json(request.app, project))


@routes.delete(PREFIX + "/projects/{project_id}")
async def delete_project(request: web.Request) -> web.Response:
    check_token(request)
    app, project_id = request.app, request.match_info["project_id"]
    result = await operations.delete_project(app, project_id)
    project = await app[PROJECTS].get(project_id)
    return web.json_response({"project": project_json(app, project) if project else None, **result})


@routes.post(PREFIX + "/sync")
async def post_sync(request: web.Request) -> web.Response:
    check_token(request)
    app = request.app
    snapshot = parse_snapshot(await read_json(request), roles(app), bridge_accounts(app))
    dry_run, force = _flag(request, "dryRun"), _flag(request, "force")
    if dry_run or request.query.get("wait", "true").lower() != "false":
        return web.json_response(await operations.sync(app, snapshot, dry_run=dry_run, force=force))
    job_id = uuid.uuid4().hex[:12]
    store = SyncJobStore(app[DATABASE])
    await store.start(job_id, _now_ms())
    seen = {"done": 0, "total": 0}

    def progress(done: int, total: int) -> None:
        seen.update(done=done, total=total)

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(_HEARTBEAT_S)
            await store.progress(job_id, seen["done"], seen["total"], _now_ms())

    async def run() -> None:
        beat = asyncio.create_task(heartbeat())
        state, result, message = "failed", None, "The process running this sync stopped"
        try:
            summary = await operations.sync(app, snapshot, force=force, progress=progress)
            state, result, message = "done", safejson.dumps(summary), None
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("Sync job %s failed", job_id)
            message = str(e) or type(e).__name__
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
            try:
                await store.progress(job_id, seen["done"], seen["total"], _now_ms())
                await store.finish(job_id, state, result, message, _now_ms())
                await store.prune(_KEPT_JOBS, _now_ms() - int(_STALE_AFTER_S * 1000))
            except Exception:
                # Unrecorded, the job reads as failed once its heartbeat is _LOST_AFTER_S old.
                log.exception("Could not record the end of sync job %s (%s)", job_id, state)

    task = asyncio.create_task(run(), name=f"sync-job-{job_id}")
    app[JOBS].add(task)
    task.add_done_callback(app[JOBS].discard)
    return web.json_response({"job": job_id, "status": f"{PREFIX}/sync/jobs/{job_id}"}, status=202)


def _now_ms() -> int:
    return int(time.time() * 1000)


def job_json(job: SyncJob, now_ms: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": job.job_id, "state": job.state, "done": job.done, "total": job.total,
    }  # fmt: skip
    if job.state == "running" and now_ms - job.updated_at > _LOST_AFTER_S * 1000:
        body.update(state="failed", message="The process running this sync stopped")
    if job.result is not None:
        body["result"] = safejson.loads(job.result)
    if job.message is not None:
        body["message"] = job.message
    return body


@routes.get(PREFIX + "/sync/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    check_token(request)
    job = await SyncJobStore(request.app[DATABASE]).get(request.match_info["job_id"])
    if job is None:
        raise NotFound("No such sync job")
    return web.json_response(job_json(job, _now_ms()))


def setup(app: web.Application) -> None:
    app[JOBS] = set()

    async def jobs_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        yield
        running = list(app[JOBS])
        for task in running:
            task.cancel()
        # Each records itself as failed (its finally) before the database closes.
        await asyncio.gather(*running, return_exceptions=True)

    app.cleanup_ctx.append(jobs_ctx)
    app.add_routes(routes)
