"""The CRM's view of the directory, parsed and validated before anything is applied.

A snapshot is validated whole: every problem is collected and reported in one 400, so the
CRM team can fix its export in one go, and nothing is applied while any problem remains.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadRequest

_MXID = re.compile(r"@[a-z0-9._=/+-]+:[A-Za-z0-9.-]+(:[0-9]{1,5})?")


@dataclass(frozen=True)
class UserSpec:
    crm_user_id: str
    name: str
    email: str
    role: str
    avatar: str | None = None
    active: bool = True
    matrix_id: str | None = None
    first_name: str = ""
    last_name: str = ""
    position: str | None = None
    profile_image: str | None = None
    company_id: str | None = None


@dataclass(frozen=True)
class ProjectSpec:
    project_id: str
    name: str
    members: tuple[str, ...]
    created_by: str | None = None
    description: str | None = None
    emoji: str | None = None
    color: str | None = None
    archived: bool = False


@dataclass
class Snapshot:
    users: dict[str, UserSpec] = field(default_factory=dict)
    projects: dict[str, ProjectSpec] = field(default_factory=dict)


class InvalidSnapshot(BadRequest):
    errcode = "M_INVALID_PARAM"
    default_message = "The request is invalid"


def _id(value: Any) -> str | None:
    # CRM ids are ObjectId strings or integers; booleans are ints in Python, so excluded.
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _opt_str(raw: dict[str, Any], key: str, where: str, problems: list[str]) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(f"{where}.{key}: must be a string or null")
        return None
    return value


def _req_str(raw: dict[str, Any], key: str, where: str, problems: list[str]) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}.{key}: required, a non-empty string")
        return ""
    return value


def parse_user(
    raw: Any,
    where: str,
    problems: list[str],
    roles: list[str],
    *,
    crm_user_id: str | None = None,
    puppet_domain_regex: str | None = None,
) -> UserSpec | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be an object")
        return None
    if crm_user_id is None:
        crm_user_id = _id(raw.get("id", raw.get("_id")))
        if crm_user_id is None:
            problems.append(f"{where}.id: required, a non-empty string or an integer")
    role = raw.get("role")
    if role not in roles:
        problems.append(f"{where}.role: must be one of {', '.join(roles)}")
    active = raw.get("active", True)
    if not isinstance(active, bool):
        problems.append(f"{where}.active: must be true or false")
    matrix_id = _opt_str(raw, "matrixId", where, problems)
    if matrix_id is not None:
        if not _MXID.fullmatch(matrix_id):
            problems.append(f"{where}.matrixId: not a Matrix user id (@name:server)")
        elif puppet_domain_regex and re.fullmatch(puppet_domain_regex, matrix_id):
            problems.append(f"{where}.matrixId: is run by the bridge, not a person's account")
    name, first_name, last_name = _names(raw, where, problems)
    company_raw = raw.get("companyId")
    company_id = _id(company_raw)
    if company_raw is not None and company_id is None:
        problems.append(f"{where}.companyId: must be a non-empty string or an integer")
    user = UserSpec(
        crm_user_id=crm_user_id or "",
        name=name,
        email=_req_str(raw, "email", where, problems),
        role=role if isinstance(role, str) else "",
        avatar=_opt_str(raw, "avatar", where, problems) or None,
        active=active if isinstance(active, bool) else True,
        matrix_id=matrix_id or None,
        first_name=first_name,
        last_name=last_name,
        position=_opt_str(raw, "position", where, problems) or None,
        profile_image=_opt_str(raw, "profileImage", where, problems) or None,
        company_id=company_id,
    )
    return user if crm_user_id else None


def split_name(name: str) -> tuple[str, str]:
    """First and last name from a full one: the first word, and the rest ("" if none)."""
    first, _, last = name.strip().partition(" ")
    return first, last.strip()


def _names(raw: dict[str, Any], where: str, problems: list[str]) -> tuple[str, str, str]:
    """(name, firstName, lastName): ``name`` is derived from the parts when absent, the
    parts are split from ``name`` when only it is given; one of the two is required."""
    first = _opt_str(raw, "firstName", where, problems) or ""
    last = _opt_str(raw, "lastName", where, problems) or ""
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        problems.append(f"{where}.name: must be a string")
        name = None
    name = (name or "").strip() or f"{first.strip()} {last.strip()}".strip()
    if not name:
        problems.append(f"{where}.name: required, a non-empty string (or firstName/lastName)")
        return "", "", ""
    if not first.strip() and not last.strip():
        first, last = split_name(name)
    return name, first.strip(), last.strip()


def parse_project(
    raw: Any,
    where: str,
    problems: list[str],
    known_users: set[str] | None,
    *,
    project_id: str | None = None,
) -> ProjectSpec | None:
    """``known_users`` None skips the membership check (the caller checks it elsewhere)."""
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be an object")
        return None
    if project_id is None:
        project_id = _id(raw.get("id", raw.get("_id")))
        if project_id is None:
            problems.append(f"{where}.id: required, a non-empty string or an integer")
    members_raw = raw.get("members")
    members: list[str] = []
    if not isinstance(members_raw, list):
        problems.append(f"{where}.members: required, a list of CRM user ids")
    else:
        seen: set[str] = set()
        for i, value in enumerate(members_raw):
            member = _id(value)
            if member is None:
                problems.append(f"{where}.members[{i}]: must be a CRM user id")
            elif member in seen:
                problems.append(f"{where}.members[{i}]: duplicate member {member!r}")
            else:
                seen.add(member)
                members.append(member)
                if known_users is not None and member not in known_users:
                    problems.append(f"{where}.members[{i}]: unknown user {member!r}")
    created_by_raw = raw.get("createdBy")
    created_by = _id(created_by_raw)
    if created_by_raw is not None and created_by is None:
        problems.append(f"{where}.createdBy: must be a CRM user id")
    archived = raw.get("archived", False)
    if not isinstance(archived, bool):
        problems.append(f"{where}.archived: must be true or false")
    project = ProjectSpec(
        project_id=project_id or "",
        name=_req_str(raw, "name", where, problems),
        members=tuple(members),
        created_by=created_by,
        description=_opt_str(raw, "description", where, problems),
        emoji=_opt_str(raw, "emoji", where, problems),
        color=_opt_str(raw, "color", where, problems),
        archived=archived is True,
    )
    return project if project_id else None


def parse_snapshot(body: Any, roles: list[str], puppet_regex: str | None = None) -> Snapshot:
    """The whole snapshot, or :class:`InvalidSnapshot` listing every problem."""
    problems: list[str] = []
    snapshot = Snapshot()
    if not isinstance(body, dict):
        raise InvalidSnapshot(
            "The snapshot must be an object {users, projects}",
            extra={"problems": ["snapshot: must be an object with users and projects"]},
        )
    users_raw, projects_raw = body.get("users"), body.get("projects")
    if not isinstance(users_raw, list):
        problems.append("users: required, a list")
        users_raw = []
    if not isinstance(projects_raw, list):
        problems.append("projects: required, a list")
        projects_raw = []
    linked: dict[str, str] = {}
    for i, raw in enumerate(users_raw):
        user = parse_user(raw, f"users[{i}]", problems, roles, puppet_domain_regex=puppet_regex)
        if user is None:
            continue
        if user.crm_user_id in snapshot.users:
            problems.append(f"users[{i}].id: duplicate user id {user.crm_user_id!r}")
            continue
        if user.matrix_id:
            if user.matrix_id in linked:
                problems.append(
                    f"users[{i}].matrixId: {user.matrix_id} is already linked to "
                    f"user {linked[user.matrix_id]!r}"
                )
            linked[user.matrix_id] = user.crm_user_id
        snapshot.users[user.crm_user_id] = user
    known = set(snapshot.users)
    for i, raw in enumerate(projects_raw):
        project = parse_project(raw, f"projects[{i}]", problems, known)
        if project is None:
            continue
        if project.project_id in snapshot.projects:
            problems.append(f"projects[{i}].id: duplicate project id {project.project_id!r}")
            continue
        snapshot.projects[project.project_id] = project
    if problems:
        raise InvalidSnapshot(
            f"The snapshot has {len(problems)} problem(s); nothing was applied",
            extra={"problems": problems},
        )
    return snapshot
