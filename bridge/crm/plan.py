"""The diff between what the CRM says and what the bridge last applied: a reviewable plan.

Planning reads the database (and, only where the bridge does not know the room's state,
the room itself) but writes nothing. A dry run returns the plan's summary; a real run
applies the same plan and reports the steps it completed in the same shape, so the two
can be compared directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..db.crm_user import CrmUser
from ..db.project import Project
from .rooms import DesiredRoom, Member
from .snapshot import ProjectSpec, UserSpec

PRESENT = ("join", "invite")


@dataclass
class UserChange:
    spec: UserSpec
    mxid: str
    row: CrmUser | None
    register: bool = False
    displayname: str | None = None
    avatar_changed: bool = False
    deactivate: bool = False
    leave_rooms: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)

    @property
    def crm_user_id(self) -> str:
        return self.spec.crm_user_id

    def writes(self) -> int:
        avatar = 0
        if self.avatar_changed:
            avatar = 2 if (self.spec.avatar or "").startswith(("http://", "https://")) else 1
        return (
            int(self.register)
            + int(self.displayname is not None)
            + avatar
            + int(self.deactivate)
            + len(self.leave_rooms)
        )


@dataclass
class MemberOp:
    kind: str  # invite | join | kick | leave
    mxid: str
    crm_user_id: str | None
    puppet: bool


@dataclass
class ProjectChange:
    spec: ProjectSpec
    row: Project | None
    desired: DesiredRoom
    alias: str
    room_id: str | None
    room_version: str | None
    create: bool = False
    adopt: bool = False
    # What the room has now: the last applied digest, or what was read from the room.
    applied: dict[str, Any] = field(default_factory=dict)
    # The room's members as read from the homeserver, when the bridge did not know them.
    observed_members: dict[str, str] | None = None
    set_name: bool = False
    set_topic: bool = False
    set_link: bool = False
    set_power: bool = False
    set_acl: bool = False
    power_changes: dict[str, list[int | None]] = field(default_factory=dict)
    ops: list[MemberOp] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    done_ops: list[MemberOp] = field(default_factory=list)

    @property
    def project_id(self) -> str:
        return self.spec.project_id

    def writes(self) -> int:
        if self.create:
            return 1 + sum(op.kind == "join" for op in self.ops)
        state = self.set_name + self.set_topic + self.set_link + self.set_power + self.set_acl
        return int(state) + len(self.ops)


@dataclass
class Plan:
    users: list[UserChange] = field(default_factory=list)
    projects: list[ProjectChange] = field(default_factory=list)
    # Removals the guard held back (counts), when the snapshot looked empty or partial.
    withheld: dict[str, int] = field(default_factory=dict)
    # Rows whose CRM fields changed without any homeserver write (email, for instance).
    unchanged: int = 0

    def writes(self) -> int:
        return sum(u.writes() for u in self.users) + sum(p.writes() for p in self.projects)

    def summary(self, done_only: bool = False) -> dict[str, Any]:
        return summarize(self, done_only)


def _pick(done_only: bool, done: set[str], key: str, wanted: bool) -> bool:
    return wanted and (not done_only or key in done)


def summarize(plan: Plan, done_only: bool) -> dict[str, Any]:
    users: dict[str, list[str]] = {"create": [], "rename": [], "avatar": [], "deactivate": []}
    projects: dict[str, list[str]] = {
        "create": [], "rename": [], "topic": [], "link": [], "archive": [], "acl": [],
    }  # fmt: skip
    members: dict[str, list[dict[str, str]]] = {"invite": [], "join": [], "kick": [], "leave": []}
    power: list[dict[str, Any]] = []
    for u in plan.users:
        for key, wanted in (
            ("create", u.register),
            ("rename", u.displayname is not None),
            ("avatar", u.avatar_changed),
            ("deactivate", u.deactivate),
        ):
            if _pick(done_only, u.done, key, wanted):
                users[key].append(u.crm_user_id)
        for room_id in u.leave_rooms:
            if not done_only or f"leave:{room_id}" in u.done:
                members["leave"].append({"room": room_id, "mxid": u.mxid})
    for p in plan.projects:
        pid = p.project_id
        for key, wanted in (
            ("create", p.create),
            ("rename", p.set_name),
            ("topic", p.set_topic),
            ("link", p.set_link),
            ("archive", p.spec.archived and p.set_power),
            ("acl", p.set_acl),
        ):
            done_key = "power" if key == "archive" else key
            if _pick(done_only, p.done, done_key, wanted):
                projects[key].append(pid)
        if _pick(done_only, p.done, "power", p.set_power or p.create):
            power.append({"project": pid, "users": p.power_changes})
        for op in p.done_ops if done_only else p.ops:
            members[op.kind].append({"project": pid, "mxid": op.mxid})
    for lists in (users, projects):
        for values in lists.values():
            values.sort()
    for values in members.values():
        values.sort(key=lambda m: (m.get("project") or m.get("room", ""), m["mxid"]))
    power.sort(key=lambda p: p["project"])
    return {
        "users": users,
        "projects": projects,
        **members,
        "powerLevels": power,
        "withheld": dict(plan.withheld),
    }


def power_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """Per-user level changes, plus the room-wide defaults that changed (archiving)."""
    before = dict((old or {}).get("users") or {})
    after = dict(new.get("users") or {})
    changes: dict[str, list[int | None]] = {}
    for mxid in sorted(set(before) | set(after)):
        if before.get(mxid) != after.get(mxid):
            changes[mxid] = [before.get(mxid), after.get(mxid)]
    if old and old.get("events_default") != new.get("events_default"):
        changes["events_default"] = [old.get("events_default"), new.get("events_default")]
    return changes


def member_ops(
    desired: Mapping[str, Member],
    current: Mapping[str, str],
    inactive_puppets: set[str],
    bot_mxid: str,
    crm_user_of: Mapping[str, str],
) -> list[MemberOp]:
    """Invites and joins for who should be there, kicks (or leaves) for who should not."""
    ops: list[MemberOp] = []
    for mxid, member in sorted(desired.items()):
        state = current.get(mxid)
        if state == "join" or (state == "invite" and not member.puppet):
            continue
        if state != "invite":
            ops.append(MemberOp("invite", mxid, member.crm_user_id, member.puppet))
        if member.puppet:
            ops.append(MemberOp("join", mxid, member.crm_user_id, True))
    for mxid, state in sorted(current.items()):
        if state not in PRESENT or mxid in desired or mxid == bot_mxid:
            continue
        # A deactivated user's puppet leaves by itself; everyone else is removed with a reason.
        if mxid in inactive_puppets and state == "join":
            ops.append(MemberOp("leave", mxid, crm_user_of.get(mxid), True))
        else:
            ops.append(MemberOp("kick", mxid, crm_user_of.get(mxid), False))
    return ops
