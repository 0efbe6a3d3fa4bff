"""The reconciliation engine: plan against the last applied state, then apply the plan.

One operation at a time (a full sync, one PUT/DELETE, or a drift repair) holds the engine
lock, so plans never race each other; inside an operation, writes run concurrently up to
``sync.concurrency``. Every step records what it applied right after the homeserver
accepted it, so a crash leaves the database describing a prefix of the work and a re-run
converges.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from aiohttp import web

from ..context import (
    CONFIG,
    CONVERSATIONS,
    DATABASE,
    FEDERATION,
    HOMESERVER,
    IDS,
    MATRIX,
    PROJECTS,
    REVOCATIONS,
    ROOM_MEMBERS,
    USERS,
)
from ..db.conversation import PROJECT
from ..db.crm_user import CrmUser
from ..db.project import Project
from ..errors import HomeserverUnavailable
from ..federation import ACL_EVENT, FederationPolicy
from ..matrix.homeserver import MatrixError
from ..metrics import METRICS
from .engine_lock import EngineLock, deployment_of
from .plan import PRESENT, MemberOp, Plan, ProjectChange, UserChange, member_ops, power_changes
from .puppets import apply_user, crm_fields_changed, plan_user, spec_of
from .rooms import (
    LINK_EVENT,
    REMOVED_REASON,
    Member,
    create_room_body,
    creators_have_implicit_power,
    desired_room,
    member_level,
    power_levels,
    read_room,
)
from .snapshot import ProjectSpec, Snapshot, UserSpec
from .tasks import run_all
from .writer import Progress, Writer

log = logging.getLogger("bridge.crm.reconcile")


def project_spec_of(project: Project) -> ProjectSpec:
    return ProjectSpec(
        project_id=project.project_id, name=project.name, members=tuple(project.members),
        created_by=project.created_by, description=project.description, emoji=project.emoji,
        color=project.color, archived=project.archived, guests=tuple(sorted(project.guests)),
    )  # fmt: skip


def _project_row(spec: ProjectSpec, old: Project | None) -> Project:
    fields = dict(
        name=spec.name, description=spec.description, emoji=spec.emoji, color=spec.color,
        created_by=spec.created_by, archived=spec.archived, members=sorted(spec.members),
        guests=sorted(spec.guests),
    )  # fmt: skip
    if old is None:
        return Project(project_id=spec.project_id, **fields)  # type: ignore[arg-type]
    return replace(old, **fields)  # type: ignore[arg-type]


def _project_changed(spec: ProjectSpec, old: Project | None) -> bool:
    if old is None:
        return True
    return project_spec_of(replace(old, members=sorted(old.members))) != replace(
        spec, members=tuple(sorted(spec.members))
    )


class Directory:
    """The engine. One per app (``DIRECTORY`` key)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self._lock: EngineLock | None = None
        self._default_version: str | None = None

    @property
    def lock(self) -> EngineLock:
        """Serialises operations across the deployment's processes (engine_lock.py)."""
        if self._lock is None:
            # Made once the database is open (first operation), never before.
            self._lock = EngineLock(self.app[DATABASE], deployment_of(self.app[CONFIG]))
        return self._lock

    @property
    def role_levels(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.app[CONFIG]["power_levels"].items()}

    @property
    def policy(self) -> FederationPolicy:
        return self.app[FEDERATION]

    @property
    def removal_ratio(self) -> float:
        return float(self.app[CONFIG].get("sync.max_removal_ratio", 0.5))

    def writer(self, total: int, progress: Progress | None = None) -> Writer:
        return Writer(int(self.app[CONFIG]["sync.concurrency"]), total, progress)

    async def default_room_version(self) -> str:
        if self._default_version is None:
            caps = await self.app[HOMESERVER].get("/_matrix/client/v3/capabilities")
            versions = caps.get("capabilities", {}).get("m.room_versions", {})
            self._default_version = str(versions.get("default", "1"))
        return self._default_version

    # Planning -------------------------------------------------------------------------

    async def plan_snapshot(self, snapshot: Snapshot, force: bool) -> Plan:
        db_users = {u.crm_user_id: u for u in await self.app[USERS].all()}
        db_projects = {p.project_id: p for p in await self.app[PROJECTS].all()}
        withheld: dict[str, int] = {}
        user_specs = dict(snapshot.users)
        active = [u for u in db_users.values() if u.active]
        absent_users = [u for u in active if u.crm_user_id not in snapshot.users]
        if absent_users and not force and self._mass(absent_users, active, snapshot.users):
            withheld["deactivations"] = len(absent_users)
        else:
            for u in absent_users:
                user_specs[u.crm_user_id] = replace(spec_of(u), active=False)
        live = [p for p in db_projects.values() if not p.archived]
        absent_projects = [p for p in live if p.project_id not in snapshot.projects]
        project_specs = dict(snapshot.projects)
        if absent_projects and not force and self._mass(absent_projects, live, snapshot.projects):
            withheld["archives"] = len(absent_projects)
        else:
            for p in absent_projects:
                project_specs[p.project_id] = replace(project_spec_of(p), archived=True)
        all_users = {uid: spec_of(u) for uid, u in db_users.items()} | user_specs
        plan = await self._plan(user_specs, all_users, project_specs, db_users, db_projects)
        if not force:
            keep = self._guard_removals(plan, empty=not snapshot.projects)
            if keep:
                withheld["removals"] = sum(
                    op.kind in ("kick", "leave")
                    for p in plan.projects
                    if p.project_id in keep
                    for op in p.ops
                )
                plan = await self._plan(
                    user_specs, all_users, project_specs, db_users, db_projects, keep
                )
        plan.withheld = withheld
        return plan

    def _mass(self, absent: list[Any], known: list[Any], given: Mapping[str, Any]) -> bool:
        return not given or len(absent) > self.removal_ratio * len(known)

    def _guard_removals(self, plan: Plan, empty: bool) -> set[str]:
        """Projects whose removals look like a broken export rather than a decision."""
        present = removals = 0
        emptied: set[str] = set()
        for p in plan.projects:
            gone = sum(op.kind in ("kick", "leave") for op in p.ops)
            removals += gone
            present += len(p.desired.members) + gone
            if gone and not p.desired.members and not p.spec.archived:
                emptied.add(p.project_id)
        if removals and (empty or removals > self.removal_ratio * present):
            return {p.project_id for p in plan.projects if p.ops}
        return emptied

    async def _plan(
        self,
        user_specs: Mapping[str, UserSpec],
        all_users: dict[str, UserSpec],
        project_specs: Mapping[str, ProjectSpec],
        db_users: Mapping[str, CrmUser],
        db_projects: Mapping[str, Project],
        keep: Iterable[str] = (),
    ) -> Plan:
        app, ids, plan = self.app, self.app[IDS], Plan()
        presence = await app[USERS].applied_presences()
        project_rooms: set[str] | None = None
        for crm_user_id, spec in user_specs.items():
            row = db_users.get(crm_user_id)
            leave: list[str] = []
            if not spec.active and row and row.registered and presence.get(crm_user_id) is None:
                if project_rooms is None:
                    # Every project room, not only those planned: a deactivated user leaves
                    # their DMs, never a project room (the directory kicks them there).
                    project_rooms = await app[PROJECTS].room_ids()
                joined = await app[ROOM_MEMBERS].joined_rooms(ids.puppet_mxid(crm_user_id))
                leave = [r for r in joined if r not in project_rooms]
            change = plan_user(app, spec, row, presence.get(crm_user_id), leave)
            if (
                change.writes()
                or crm_fields_changed(spec, row)
                or (row and spec.active != row.active)
            ):
                plan.users.append(change)
        rooms = [
            db_projects[pid].room_id
            for pid in project_specs
            if pid in db_projects and db_projects[pid].room_id
        ]
        members = await app[ROOM_MEMBERS].of_rooms([r for r in rooms if r])
        # Departed members still in a room are looked up too: they decide kick or leave.
        missing = {
            cid
            for room in members.values()
            for mxid in room
            if (cid := ids.crm_user_id_of(mxid)) is not None and cid not in all_users
        }
        for cid, row in (await app[USERS].get_many(sorted(missing))).items():
            all_users[cid] = spec_of(row)
        crm_user_of: dict[str, str] = {}
        for cid, u in all_users.items():
            crm_user_of[ids.puppet_mxid(cid)] = cid
            if u.matrix_id:
                crm_user_of[u.matrix_id] = cid
        inactive = {ids.puppet_mxid(cid) for cid, u in all_users.items() if not u.active}
        keep_set = set(keep)
        reads = asyncio.Semaphore(8)

        async def one(spec: ProjectSpec) -> ProjectChange:
            row = db_projects.get(spec.project_id)
            current = members.get(row.room_id) if row and row.room_id else None
            async with reads:
                return await self._plan_project(
                    spec, row, all_users, current, spec.project_id in keep_set,
                    inactive, crm_user_of,
                )  # fmt: skip

        plan.projects = await run_all(one(s) for s in project_specs.values())
        return plan

    async def _plan_project(
        self,
        spec: ProjectSpec,
        row: Project | None,
        users: Mapping[str, UserSpec],
        current: dict[str, str] | None,
        keep_existing: bool,
        inactive: set[str],
        crm_user_of: Mapping[str, str],
    ) -> ProjectChange:
        matrix, ids = self.app[MATRIX], self.app[IDS]
        alias = ids.project_alias(spec.project_id)
        room_id = row.room_id if row else None
        applied: dict[str, Any] = dict(row.applied) if row and room_id else {}
        adopt, observed = False, None
        if room_id is None and row is not None:
            # The row is saved before createRoom: a crash between createRoom and saving the
            # room id leaves the room behind its alias. (Without a row, no room was ever
            # attempted; a room found there anyway is adopted when createRoom says so.)
            room_id = await matrix.resolve_alias(alias)  # type: ignore[arg-type]
            adopt = room_id is not None
        if room_id and (
            adopt or not applied.get("members_known") or not applied.get("power_levels")
        ):
            actual = await read_room(matrix, room_id)
            applied = {**actual.digest, "room_version": actual.room_version}
            current = observed = actual.members
        version = applied.get("room_version") if room_id else await self.default_room_version()
        implicit = creators_have_implicit_power(version)
        policy = self.policy
        desired = desired_room(spec, users, ids, self.role_levels, implicit, policy)
        current = dict(current or {})
        retained: dict[str, str] = {}
        if room_id:
            present = {
                m: s for m, s in current.items()
                if s in PRESENT and m not in desired.members and m != ids.bot_mxid
            }  # fmt: skip
            if keep_existing:
                retained = present
            elif policy.members_may_invite:
                # Remote users a member invited stay, while their server is allowed.
                retained = {
                    m: s for m, s in present.items() if policy.is_remote(m) and policy.is_allowed(m)
                }  # fmt: skip
        if retained:
            old_levels = (applied.get("power_levels") or {}).get("users") or {}
            levels = dict(desired.power_levels["users"])
            guest_level = policy.guest_level(self.role_levels)
            for mxid in retained:
                desired.members[mxid] = _retained_member(mxid, crm_user_of)
                default = guest_level if policy.is_remote(mxid) else 0
                levels[mxid] = int(old_levels.get(mxid, default))
            levels.pop(ids.bot_mxid, None)
            remote = any(policy.is_remote(mxid) for mxid in desired.members)  # guests too
            desired.power_levels = power_levels(
                levels,
                spec.archived,
                ids.bot_mxid,
                implicit,
                member_level(self.role_levels),
                guest_level if remote else None,
            )
        change = ProjectChange(
            spec=spec, row=row, desired=desired, alias=alias, room_id=room_id,
            room_version=version, create=room_id is None, adopt=adopt, applied=applied,
            observed_members=observed,
        )  # fmt: skip
        if change.create:
            change.ops = member_ops(desired.members, {}, set(), ids.bot_mxid, crm_user_of)
            change.power_changes = power_changes(None, desired.power_levels)
            return change
        diff_existing(change, current, inactive, ids.bot_mxid, crm_user_of)
        return change

    # Applying -------------------------------------------------------------------------

    async def apply(self, plan: Plan, progress: Progress | None = None) -> dict[str, Any]:
        hs = self.app[HOMESERVER]
        before = hs.writes
        write = self.writer(plan.writes(), progress)
        errors: list[dict[str, str]] = []

        async def guarded(kind: str, key: str, step: Any) -> None:
            try:
                await step
            except (MatrixError, HomeserverUnavailable) as e:
                log.warning("Applying %s %s failed: %s", kind, key, e)
                errors.append({kind: key, "message": str(e)})

        # Homeserver refusals and outages are per entity (reported, siblings go on); any
        # other failure stops the whole operation before the engine lock is released.
        await run_all(
            guarded("user", u.crm_user_id, self._apply_user(u, write)) for u in plan.users
        )
        await run_all(
            guarded("project", p.project_id, self.apply_project(p, write)) for p in plan.projects
        )
        applied = plan.summary(done_only=True)
        if (metrics := self.app.get(METRICS)) is not None:
            metrics.count_reconcile(applied)
        return {
            "plan": plan.summary(),
            "applied": applied,
            "writes": {"planned": plan.writes(), "made": hs.writes - before},
            "errors": errors,
            "withheld": plan.withheld,
        }

    async def _apply_user(self, change: UserChange, write: Writer) -> None:
        await apply_user(self.app, change, write)

    async def apply_project(self, change: ProjectChange, write: Writer) -> None:
        app, matrix, ids = self.app, self.app[MATRIX], self.app[IDS]
        spec, pid = change.spec, change.project_id
        if _project_changed(spec, change.row):
            await app[PROJECTS].upsert(_project_row(spec, change.row))
        applied = dict(change.applied)
        room_id = change.room_id
        if change.create:
            body = create_room_body(change.desired, change.alias[1:].split(":", 1)[0])
            invited_later = False
            try:
                room_id = await write(matrix.create_room(body))
            except MatrixError as e:
                if e.errcode == "M_ROOM_IN_USE":
                    # The alias already names a room (a database restored from backup, say):
                    # adopt it and change it from what it really holds.
                    found = await matrix.resolve_alias(change.alias)  # type: ignore[arg-type]
                    if found is None:
                        raise
                    actual = await read_room(matrix, found)
                    change.create, change.adopt, change.room_id = False, True, found
                    change.applied = {**actual.digest, "room_version": actual.room_version}
                    change.observed_members = actual.members
                    change.ops = []
                    diff_existing(change, actual.members, set(), ids.bot_mxid, {})
                    return await self.apply_project(change, write)
                # A rate-limited appservice may not invite more than its burst in one
                # createRoom (checked before the room exists): invite one by one instead.
                if e.status != 400 or not body["invite"]:
                    raise
                log.info("createRoom for %s refused (%s); inviting separately", pid, e.message)
                room_id = await write(matrix.create_room({**body, "invite": []}))
                invited_later = True
            applied = {
                **change.desired.digest(),
                "room_version": change.room_version,
                "members_known": True,
            }
            await app[PROJECTS].save_applied(pid, room_id, applied)
            await app[CONVERSATIONS].add(room_id, PROJECT, project_id=pid)
            await app[ROOM_MEMBERS].set(room_id, ids.bot_mxid, "join")  # the creator
            change.done.update(("create", "power"))
            if invited_later:
                await self._members(room_id, change, write)
                return
            guests = {m for m, member in change.desired.members.items() if member.guest}
            invites = [op for op in change.ops if op.kind == "invite" and op.mxid not in guests]
            await app[ROOM_MEMBERS].set_many(room_id, {op.mxid: "invite" for op in invites})
            change.done_ops.extend(invites)
            later = [op for op in change.ops if op.kind == "join" or op.mxid in guests]
            await run_all(self._member(room_id, [op], change, write) for op in later)
            return
        assert room_id is not None
        if change.observed_members is not None:
            # Record what the room really holds before changing it.
            for mxid, membership in change.observed_members.items():
                await app[ROOM_MEMBERS].set(room_id, mxid, membership)
            await app[CONVERSATIONS].add(room_id, PROJECT, project_id=pid)
            applied["members_known"] = True
            await app[PROJECTS].save_applied(pid, room_id, applied)
        desired = change.desired
        state = [
            ("rename", "name", desired.name, "m.room.name", {"name": desired.name},
             change.set_name),
            ("topic", "topic", desired.topic, "m.room.topic", {"topic": desired.topic},
             change.set_topic),
            ("link", "link", desired.link, LINK_EVENT, desired.link, change.set_link),
            ("power", "power_levels", desired.power_levels, "m.room.power_levels",
             desired.power_levels, change.set_power),
            ("acl", "server_acl", desired.server_acl, ACL_EVENT, desired.server_acl,
             change.set_acl),
        ]  # fmt: skip

        async def put_state(done: str, key: str, value: Any, kind: str, content: Any) -> None:
            await write(matrix.send_state(room_id, kind, content))  # type: ignore[arg-type]
            applied[key] = value
            change.done.add(done)

        await run_all(put_state(*step[:5]) for step in state if step[5])
        if change.done:
            await app[PROJECTS].save_applied(pid, room_id, applied)
        await self._members(room_id, change, write)

    async def _members(self, room_id: str, change: ProjectChange, write: Writer) -> None:
        """Everyone's ops concurrently; one person's ops in order."""
        by_mxid: dict[str, list[MemberOp]] = {}
        for op in change.ops:
            by_mxid.setdefault(op.mxid, []).append(op)
        await run_all(self._member(room_id, ops, change, write) for ops in by_mxid.values())

    async def _membership(self, room_id: str, mxid: str) -> str:
        event = await self.app[MATRIX].get_state_event(room_id, "m.room.member", mxid)  # type: ignore[arg-type]
        return (event or {}).get("membership", "leave")

    async def _invite_guest(self, room_id: str, op: MemberOp, write: Writer) -> bool:
        """A remote invite crosses to the guest's server, which may be down: that costs this
        guest only (the next reconcile retries), never the rest of the project."""
        try:
            await write(self.app[MATRIX].invite(room_id, op.mxid))  # type: ignore[arg-type]
        except (MatrixError, HomeserverUnavailable) as e:
            if await self._membership(room_id, op.mxid) in PRESENT:
                return True
            log.warning("Inviting guest %s failed (%s); the next reconcile retries", op.mxid, e)
            return False
        return True

    async def _member(
        self, room_id: str, ops: list[MemberOp], change: ProjectChange, write: Writer
    ) -> None:
        """One person's ops in order (invite before join); each recorded once accepted."""
        matrix, members = self.app[MATRIX], self.app[ROOM_MEMBERS]
        rid: Any = room_id
        for op in ops:
            if op.kind == "invite" and self.policy.is_remote(op.mxid):
                if not await self._invite_guest(room_id, op, write):
                    return
                await members.set(room_id, op.mxid, "invite")
                change.done_ops.append(op)
                continue
            try:
                if op.kind == "invite":
                    await write(matrix.invite(rid, op.mxid))
                elif op.kind == "join":
                    await write(matrix.join(rid, as_user=op.mxid))
                elif op.kind == "kick":
                    await write(matrix.kick(rid, op.mxid, REMOVED_REASON))
                else:
                    await write(matrix.leave(rid, as_user=op.mxid))
                state = {"invite": "invite", "join": "join"}.get(op.kind, "leave")
            except MatrixError as e:
                # Our record was stale (someone acted in Element meanwhile): ask the room.
                state = await self._membership(room_id, op.mxid)
                if op.kind == "join" and state not in PRESENT and e.status == 403:
                    await write(matrix.invite(rid, op.mxid))
                    await write(matrix.join(rid, as_user=op.mxid))
                    state = "join"
                elif (op.kind in ("kick", "leave")) == (state in PRESENT):
                    raise
            await members.set(room_id, op.mxid, state)
            change.done_ops.append(op)
            if state not in PRESENT:
                # Open sockets lose the room now, not when the leave comes back from Matrix.
                await self.app[REVOCATIONS].member_left(room_id, op.mxid)


def diff_existing(
    change: ProjectChange,
    current: Mapping[str, str],
    inactive: set[str],
    bot_mxid: str,
    crm_user_of: Mapping[str, str],
) -> None:
    """Fill in the state writes and member ops that turn an existing room into the plan."""
    applied, desired = change.applied, change.desired
    change.set_name = applied.get("name") != desired.name
    change.set_topic = (applied.get("topic") or "") != desired.topic
    change.set_link = applied.get("link") != desired.link
    change.set_power = applied.get("power_levels") != desired.power_levels
    change.set_acl = applied.get("server_acl") != desired.server_acl
    if change.set_power:
        change.power_changes = power_changes(applied.get("power_levels"), desired.power_levels)
    change.ops = member_ops(desired.members, current, inactive, bot_mxid, crm_user_of)


def _retained_member(mxid: str, crm_user_of: Mapping[str, str]) -> Member:
    # Not a puppet for planning purposes: someone kept in place needs no invite or join.
    return Member(crm_user_of.get(mxid, ""), puppet=False)
