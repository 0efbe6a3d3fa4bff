"""Puppets: one Matrix account per CRM user, named and pictured as the CRM says.

Every write is skipped when the database says it was already applied, so calling this for
an unchanged user costs no homeserver write (the facade calls it before every DM).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import aiohttp
from aiohttp import web

from ..context import CONFIG, HOMESERVER, IDS, MATRIX, REVOCATIONS, ROOM_MEMBERS, USERS
from ..db.crm_user import CrmUser
from ..matrix.homeserver import MatrixError
from .plan import UserChange
from .snapshot import UserSpec, split_name
from .writer import Writer

log = logging.getLogger("bridge.crm.puppets")

_CRM_FIELDS = (
    "name", "email", "avatar", "role", "active", "matrix_id", "first_name", "last_name",
    "position", "profile_image", "company_id",
)  # fmt: skip


def displayname(app: web.Application, spec: UserSpec) -> str:
    """``bridge.displayname_template`` with {name}, {firstName}, {lastName}, {position}."""
    return app[CONFIG]["bridge.displayname_template"].format(
        name=spec.name, firstName=spec.first_name, lastName=spec.last_name,
        position=spec.position or "",
    ).strip()  # fmt: skip


def spec_of(user: CrmUser) -> UserSpec:
    first, last = user.first_name, user.last_name
    if first is None and last is None:  # recorded before the directory had name parts
        first, last = split_name(user.name)
    return UserSpec(
        crm_user_id=user.crm_user_id, name=user.name, email=user.email, role=user.role,
        avatar=user.avatar, active=user.active, matrix_id=user.matrix_id,
        first_name=first or "", last_name=last or "", position=user.position,
        profile_image=user.profile_image, company_id=user.company_id,
    )  # fmt: skip


def plan_user(
    app: web.Application,
    spec: UserSpec,
    row: CrmUser | None,
    presence: str | None,
    rooms_to_leave: list[str],
) -> UserChange:
    change = UserChange(spec=spec, mxid=app[IDS].puppet_mxid(spec.crm_user_id), row=row)
    registered = bool(row and row.registered)
    if not spec.active and not registered:
        return change  # never existed on Matrix: nothing to create, nothing to undo
    change.register = not registered
    name = displayname(app, spec)
    if row is None or row.applied_displayname != name:
        change.displayname = name
    change.avatar_changed = (row.applied_avatar if row else None) != spec.avatar
    if not spec.active and presence != "offline":
        change.deactivate = True
        change.leave_rooms = list(rooms_to_leave)
    return change


def _row_for(spec: UserSpec, mxid: str, old: CrmUser | None) -> CrmUser:
    if old is None:
        return CrmUser(
            crm_user_id=spec.crm_user_id, mxid=mxid, name=spec.name, email=spec.email,
            avatar=spec.avatar, role=spec.role, active=spec.active, matrix_id=spec.matrix_id,
            **_people_fields(spec),
        )  # fmt: skip
    return replace(
        old, name=spec.name, email=spec.email, avatar=spec.avatar, role=spec.role,
        active=spec.active, matrix_id=spec.matrix_id, **_people_fields(spec),
    )  # fmt: skip


def _people_fields(spec: UserSpec) -> dict[str, str | None]:
    return {
        "first_name": spec.first_name, "last_name": spec.last_name, "position": spec.position,
        "profile_image": spec.profile_image, "company_id": spec.company_id,
    }  # fmt: skip


def crm_fields_changed(spec: UserSpec, row: CrmUser | None) -> bool:
    if row is None:
        return True
    new = _row_for(spec, row.mxid, row)
    return any(getattr(new, f) != getattr(row, f) for f in _CRM_FIELDS)


async def _avatar_mxc(app: web.Application, source: str, mxid: str, write: Writer) -> str | None:
    """The media repo URI for a CRM avatar URL, uploading it (only called when it changed)."""
    if source.startswith("mxc://"):
        return source
    limit = int(app[CONFIG]["api.max_upload_size"])
    try:
        async with app[HOMESERVER].session.get(
            source, timeout=aiohttp.ClientTimeout(total=15)
        ) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            data = await resp.content.read(limit + 1)
            if len(data) > limit:
                raise ValueError("too large")
            content_type = resp.headers.get("Content-Type", "application/octet-stream")
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        # Kept as not applied: the next sync tries again; the rest of the user still syncs.
        log.warning("Cannot fetch the avatar of %s: %s", mxid, e)
        return None
    return await write(app[MATRIX].upload(data, content_type.split(";")[0], as_user=mxid))


async def apply_user(app: web.Application, change: UserChange, write: Writer) -> None:
    users, matrix, spec = app[USERS], app[MATRIX], change.spec
    row = _row_for(spec, change.mxid, change.row)
    fields_changed = crm_fields_changed(spec, change.row)
    mxid = change.mxid
    try:
        if change.register:
            await write(matrix.register_puppet(mxid[1:].split(":", 1)[0]))
            row.registered = True
            change.done.add("create")
        if change.displayname is not None:
            await write(matrix.set_displayname(mxid, change.displayname))  # type: ignore[arg-type]
            row.applied_displayname = change.displayname
            change.done.add("rename")
        if change.avatar_changed:
            mxc = await _avatar_mxc(app, spec.avatar, mxid, write) if spec.avatar else ""
            if mxc is not None:
                await write(matrix.set_avatar_url(mxid, mxc))  # type: ignore[arg-type]
                row.applied_avatar, row.avatar_mxc = spec.avatar, mxc or None
                change.done.add("avatar")
    finally:
        # One row write for the CRM's fields and what was applied, even after a failure.
        # A crash before it only repeats writes (registering again is M_USER_IN_USE).
        if fields_changed or change.done:
            await users.upsert(row)
        if not spec.active and change.row is not None and change.row.active:
            # Recorded inactive: the user's sockets close now (connecting again is refused).
            await app[REVOCATIONS].user_deactivated(spec.crm_user_id)
        old_company = change.row.company_id if change.row is not None else None
        if old_company is not None and old_company != spec.company_id:
            # Recorded in another company: the sockets leave the old company's room now.
            await app[REVOCATIONS].company_left(spec.crm_user_id, old_company)
    if change.deactivate:
        await write(matrix.set_presence(mxid, "offline"))  # type: ignore[arg-type]
        for room_id in change.leave_rooms:
            try:
                await write(matrix.leave(room_id, as_user=mxid))  # type: ignore[arg-type]
            except MatrixError as e:
                log.info("%s could not leave %s (%s); recording it as gone", mxid, room_id, e)
            await app[ROOM_MEMBERS].set(room_id, mxid, "leave")
            await app[REVOCATIONS].member_left(room_id, mxid)
            change.done.add(f"leave:{room_id}")
        await users.set_applied_presence(spec.crm_user_id, "offline")
        change.done.add("deactivate")
    elif spec.active and change.row is not None and not change.row.active:
        await users.set_applied_presence(spec.crm_user_id, None)


async def ensure_puppet(app: web.Application, user: CrmUser) -> None:
    """Register the puppet and set its profile if needed; no writes when nothing changed."""
    spec = spec_of(user)
    # Planned as if active (a DM partner needs a puppet), applied with the CRM's fields as is.
    change = plan_user(app, replace(spec, active=True), user, None, [])
    change.spec = spec
    if change.writes():
        await apply_user(app, change, Writer(int(app[CONFIG]["sync.concurrency"])))
