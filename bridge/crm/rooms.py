"""What a project room should look like, and what it looks like now.

The desired state is computed from the CRM alone; the actual state is read from the room
only when the bridge does not already know what it applied (a crash, an adopted room).
Both are reduced to the same digest, so comparing them is a plain ``==``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..ids import IdMapper
from ..matrix.client import MatrixClient
from .snapshot import ProjectSpec, UserSpec

# The state event that links a room to its CRM project, for any client or tool to find.
LINK_EVENT = "com.crm.project"
# Everything about the room's configuration is the bridge's (the CRM's) to decide.
_OWNER_ONLY_EVENTS = (
    "m.room.name", "m.room.topic", "m.room.avatar", "m.room.power_levels",
    "m.room.canonical_alias", "m.room.history_visibility", "m.room.join_rules",
    "m.room.encryption", "m.room.server_acl", "m.room.tombstone", "m.room.guest_access",
    LINK_EVENT,
)  # fmt: skip
_PL_DEFAULTS: dict[str, Any] = {
    "users_default": 0, "events_default": 0, "state_default": 50, "invite": 0,
    "kick": 50, "ban": 50, "redact": 50, "events": {}, "users": {},
    "notifications": {"room": 50},
}  # fmt: skip
OWNER_LEVEL = 100
PINNED_EVENTS = "m.room.pinned_events"
REMOVED_REASON = "Removed from the project in the CRM"


def creators_have_implicit_power(room_version: str | None) -> bool:
    """Room version 12 (and hydra) give the creator infinite power outside ``users``."""
    if not room_version:
        return False
    return (room_version.isdigit() and int(room_version) >= 12) or "hydra" in room_version


@dataclass(frozen=True)
class Member:
    crm_user_id: str
    puppet: bool  # False: the person's linked Matrix account


@dataclass
class DesiredRoom:
    name: str
    topic: str
    link: dict[str, Any]
    power_levels: dict[str, Any]
    members: dict[str, Member] = field(default_factory=dict)

    def digest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "topic": self.topic,
            "link": self.link,
            "power_levels": self.power_levels,
        }


def link_content(project: ProjectSpec) -> dict[str, Any]:
    return {"id": project.project_id, "emoji": project.emoji, "color": project.color}


def member_level(role_levels: Mapping[str, int]) -> int:
    """The level every member has (the employee's): what it takes to pin in a project."""
    return int(role_levels.get("employee", min(role_levels.values(), default=0)))


def power_levels(
    levels: Mapping[str, int],
    archived: bool,
    bot_mxid: str,
    creator_implicit: bool,
    pin_level: int = 0,
) -> dict[str, Any]:
    owner = OWNER_LEVEL
    # Archived: nobody below the bot may post; the bot keeps the room's keys.
    users = {} if archived else {mxid: lvl for mxid, lvl in sorted(levels.items()) if lvl}
    if not creator_implicit:
        users[bot_mxid] = owner
    return normalize_power_levels(
        {
            "users": users,
            "users_default": 0,
            "events_default": owner if archived else 0,
            "state_default": owner,
            "invite": owner,
            "kick": owner,
            "ban": owner,
            "redact": 50,
            # Any member may pin, as in every team chat (an archived room: nobody).
            "events": {
                **dict.fromkeys(_OWNER_ONLY_EVENTS, owner),
                PINNED_EVENTS: owner if archived else pin_level,
            },
            "notifications": {"room": 50},
        }
    )


def normalize_power_levels(content: Mapping[str, Any]) -> dict[str, Any]:
    """The keys the bridge manages, with spec defaults filled in, so contents compare."""
    out = {key: content.get(key, default) for key, default in _PL_DEFAULTS.items()}
    out["users"] = dict(sorted((out["users"] or {}).items()))
    out["events"] = dict(sorted((out["events"] or {}).items()))
    return out


def desired_room(
    project: ProjectSpec,
    users: Mapping[str, UserSpec],
    ids: IdMapper,
    role_levels: Mapping[str, int],
    creator_implicit: bool,
) -> DesiredRoom:
    members: dict[str, Member] = {}
    levels: dict[str, int] = {}
    for crm_user_id in project.members:
        user = users.get(crm_user_id)
        if user is None or not user.active:
            continue
        level = int(role_levels.get(user.role, 0))
        puppet = ids.puppet_mxid(crm_user_id)
        members[puppet] = Member(crm_user_id, True)
        levels[puppet] = level
        if user.matrix_id:
            members[user.matrix_id] = Member(crm_user_id, False)
            levels[user.matrix_id] = level
    return DesiredRoom(
        name=project.name,
        topic=project.description or "",
        link=link_content(project),
        power_levels=power_levels(
            levels, project.archived, ids.bot_mxid, creator_implicit, member_level(role_levels)
        ),
        members=members,
    )


def create_room_body(room: DesiredRoom, alias_localpart: str) -> dict[str, Any]:
    """One createRoom call that sets everything at once: fewer events, fewer writes."""
    body: dict[str, Any] = {
        "preset": "private_chat",
        "visibility": "private",
        "room_alias_name": alias_localpart,
        "name": room.name,
        "invite": list(room.members),
        "power_level_content_override": room.power_levels,
        "initial_state": [
            {"type": LINK_EVENT, "state_key": "", "content": room.link},
            # Members who join later read the whole history, as the CRM chat always did.
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "shared"},
            },
        ],
    }
    if room.topic:
        body["topic"] = room.topic
    return body


@dataclass
class ActualRoom:
    digest: dict[str, Any]
    members: dict[str, str]  # mxid -> membership
    room_version: str | None


async def read_room(matrix: MatrixClient, room_id: str) -> ActualRoom:
    """The room's state as the homeserver has it (reads only)."""
    state = await matrix.get_state(room_id)  # type: ignore[arg-type]
    digest: dict[str, Any] = {"name": "", "topic": "", "link": None, "power_levels": None}
    members: dict[str, str] = {}
    version = None
    for event in state:
        kind, content = event.get("type"), event.get("content") or {}
        if kind == "m.room.create":
            version = content.get("room_version", "1")
        elif kind == "m.room.name":
            digest["name"] = content.get("name", "")
        elif kind == "m.room.topic":
            digest["topic"] = content.get("topic", "")
        elif kind == LINK_EVENT and event.get("state_key") == "":
            digest["link"] = {k: content.get(k) for k in ("id", "emoji", "color")}
        elif kind == "m.room.power_levels":
            digest["power_levels"] = normalize_power_levels(content)
        elif kind == "m.room.member":
            members[event["state_key"]] = content.get("membership", "leave")
    return ActualRoom(digest, members, version)
