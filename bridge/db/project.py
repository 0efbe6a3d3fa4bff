"""CRM projects, their rooms and members (tables ``project`` and ``project_member``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mautrix.util.async_db import Database

from .crm_user import now_ms

COLUMNS = (
    "project_id, name, description, emoji, color, created_by, archived, room_id, applied, "
    "created_at, updated_at, guests"
)


@dataclass
class Project:
    project_id: str
    name: str
    description: str | None = None
    emoji: str | None = None
    color: str | None = None
    created_by: str | None = None
    archived: bool = False
    room_id: str | None = None
    # What the bridge last applied to the room (name, topic, link, power levels...).
    applied: dict[str, Any] = field(default_factory=dict)
    created_at: int = field(default_factory=now_ms)
    updated_at: int = field(default_factory=now_ms)
    # Guests from other homeservers the CRM lists (mxids), as a JSON list in the row.
    guests: list[str] = field(default_factory=list)
    # Current CRM members, loaded with the project.
    members: list[str] = field(default_factory=list)


def _row(row, members: list[str] | None = None) -> Project | None:
    if row is None:
        return None
    data = dict(row)
    data["archived"] = bool(data["archived"])
    data["applied"] = json.loads(data["applied"]) if data["applied"] else {}
    data["guests"] = json.loads(data["guests"]) if data.get("guests") else []
    return Project(**data, members=members or [])


class ProjectStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, project_id: str) -> Project | None:
        row = await self.db.fetchrow(
            f"SELECT {COLUMNS} FROM project WHERE project_id=$1", project_id
        )
        if row is None:
            return None
        return _row(row, await self.members(project_id))

    async def get_by_room(self, room_id: str) -> Project | None:
        row = await self.db.fetchrow(f"SELECT {COLUMNS} FROM project WHERE room_id=$1", room_id)
        if row is None:
            return None
        return _row(row, await self.members(row["project_id"]))

    async def all(self) -> list[Project]:
        rows = await self.db.fetch(f"SELECT {COLUMNS} FROM project ORDER BY name")
        members: dict[str, list[str]] = {}
        for member in await self.db.fetch(
            "SELECT project_id, crm_user_id FROM project_member ORDER BY crm_user_id"
        ):
            members.setdefault(member["project_id"], []).append(member["crm_user_id"])
        return [p for p in (_row(r, members.get(r["project_id"], [])) for r in rows) if p]

    async def of_member(self, crm_user_id: str) -> list[Project]:
        """The projects a user is a member of, with their member lists: two queries."""
        rows = await self.db.fetch(
            f"SELECT {', '.join('p.' + c.strip() for c in COLUMNS.split(','))} FROM project p "
            "JOIN project_member m ON m.project_id = p.project_id WHERE m.crm_user_id=$1",
            crm_user_id,
        )
        if not rows:
            return []
        ids = [r["project_id"] for r in rows]
        placeholders = ", ".join(f"${i + 1}" for i in range(len(ids)))
        members: dict[str, list[str]] = {}
        for member in await self.db.fetch(
            "SELECT project_id, crm_user_id FROM project_member "
            f"WHERE project_id IN ({placeholders}) ORDER BY crm_user_id",
            *ids,
        ):
            members.setdefault(member["project_id"], []).append(member["crm_user_id"])
        return [p for p in (_row(r, members.get(r["project_id"], [])) for r in rows) if p]

    async def room_ids(self) -> set[str]:
        """Every project room, to tell project rooms from DMs (no member lists)."""
        rows = await self.db.fetch("SELECT room_id FROM project WHERE room_id IS NOT NULL")
        return {r["room_id"] for r in rows}

    async def members(self, project_id: str) -> list[str]:
        rows = await self.db.fetch(
            "SELECT crm_user_id FROM project_member WHERE project_id=$1 ORDER BY crm_user_id",
            project_id,
        )
        return [r["crm_user_id"] for r in rows]

    async def projects_of(self, crm_user_id: str) -> list[str]:
        rows = await self.db.fetch(
            "SELECT project_id FROM project_member WHERE crm_user_id=$1", crm_user_id
        )
        return [r["project_id"] for r in rows]

    async def upsert(self, project: Project) -> None:
        """Save the project and replace its member list, in one transaction."""
        project.updated_at = now_ms()
        async with self.db.acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO project ({COLUMNS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
                "ON CONFLICT (project_id) DO UPDATE SET name=excluded.name, "
                "description=excluded.description, emoji=excluded.emoji, "
                "color=excluded.color, created_by=excluded.created_by, "
                "archived=excluded.archived, room_id=excluded.room_id, "
                "applied=excluded.applied, updated_at=excluded.updated_at, "
                "guests=excluded.guests",
                project.project_id, project.name, project.description, project.emoji,
                project.color, project.created_by, project.archived, project.room_id,
                json.dumps(project.applied), project.created_at, project.updated_at,
                json.dumps(sorted(project.guests)),
            )  # fmt: skip
            await conn.execute("DELETE FROM project_member WHERE project_id=$1", project.project_id)
            if project.members:
                await conn.executemany(
                    "INSERT INTO project_member (project_id, crm_user_id) VALUES ($1, $2)",
                    [(project.project_id, member) for member in project.members],
                )

    async def get_many(self, project_ids: list[str]) -> dict[str, Project]:
        """Projects by id, without their member lists (for listing conversations)."""
        if not project_ids:
            return {}
        placeholders = ", ".join(f"${i + 1}" for i in range(len(project_ids)))
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM project WHERE project_id IN ({placeholders})", *project_ids
        )
        return {p.project_id: p for p in (_row(r) for r in rows) if p}

    async def save_applied(self, project_id: str, room_id: str | None, applied: dict) -> None:
        """Record the room and the state the directory applied to it (members untouched)."""
        await self.db.execute(
            "UPDATE project SET room_id=$2, applied=$3, updated_at=$4 WHERE project_id=$1",
            project_id, room_id, json.dumps(applied), now_ms(),
        )  # fmt: skip
