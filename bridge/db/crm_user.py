"""CRM users and the state of their puppets as last applied to Matrix (table ``crm_user``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mautrix.util.async_db import Database

COLUMNS = (
    "crm_user_id, mxid, name, email, avatar, role, active, matrix_id, registered, "
    "applied_displayname, applied_avatar, avatar_mxc, created_at, updated_at, "
    "first_name, last_name, position, profile_image, company_id"
)
_NAMES = [name.strip() for name in COLUMNS.split(",")]
_COUNT = len(_NAMES)
# Where the flags SQLite stores as integers sit in COLUMNS (the dataclass's field order).
_ACTIVE, _REGISTERED = _NAMES.index("active"), _NAMES.index("registered")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class CrmUser:
    crm_user_id: str
    mxid: str
    name: str
    email: str
    avatar: str | None = None
    role: str = "employee"
    active: bool = True
    # The person's own Matrix account, linked to this CRM user (the Element story).
    matrix_id: str | None = None
    # What was last applied to Matrix, so unchanged users cost no homeserver writes.
    registered: bool = False
    applied_displayname: str | None = None
    applied_avatar: str | None = None
    avatar_mxc: str | None = None
    created_at: int = field(default_factory=now_ms)
    updated_at: int = field(default_factory=now_ms)
    # The CRM's name parts (split from ``name`` when it sends only that), job title,
    # picture URL and company (employees of one company see each other).
    first_name: str | None = None
    last_name: str | None = None
    position: str | None = None
    profile_image: str | None = None
    company_id: str | None = None

    def values(self) -> tuple:
        return (
            self.crm_user_id, self.mxid, self.name, self.email, self.avatar, self.role,
            self.active, self.matrix_id, self.registered, self.applied_displayname,
            self.applied_avatar, self.avatar_mxc, self.created_at, self.updated_at,
            self.first_name, self.last_name, self.position, self.profile_image, self.company_id,
        )  # fmt: skip

    @property
    def mxids(self) -> list[str]:
        """Every Matrix account that speaks for this user: the puppet, then the linked one."""
        return [self.mxid, self.matrix_id] if self.matrix_id else [self.mxid]


def _like_escape(word: str) -> str:
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _row(row) -> CrmUser | None:
    if row is None:
        return None
    # By position (COLUMNS follows the fields): a listing loads a user per participant, and
    # a dict with keyword arguments cost several times as much.
    values = list(row)
    values[_ACTIVE] = bool(values[_ACTIVE])
    values[_REGISTERED] = bool(values[_REGISTERED])
    return CrmUser(*values)


class CrmUserStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, crm_user_id: str) -> CrmUser | None:
        row = await self.db.fetchrow(
            f"SELECT {COLUMNS} FROM crm_user WHERE crm_user_id=$1", crm_user_id
        )
        return _row(row)

    async def get_by_mxid(self, mxid: str) -> CrmUser | None:
        """The CRM user behind a puppet or a linked Matrix account."""
        row = await self.db.fetchrow(
            f"SELECT {COLUMNS} FROM crm_user WHERE mxid=$1 OR matrix_id=$1 "
            "ORDER BY (mxid=$1) DESC LIMIT 1",
            mxid,
        )
        return _row(row)

    async def get_many(self, crm_user_ids: list[str]) -> dict[str, CrmUser]:
        if not crm_user_ids:
            return {}
        placeholders = ", ".join(f"${i + 1}" for i in range(len(crm_user_ids)))
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM crm_user WHERE crm_user_id IN ({placeholders})",
            *crm_user_ids,
        )
        return {user.crm_user_id: user for user in map(_row, rows) if user}

    async def all(self, active_only: bool = False) -> list[CrmUser]:
        where = " WHERE active" if active_only else ""
        rows = await self.db.fetch(f"SELECT {COLUMNS} FROM crm_user{where} ORDER BY name")
        return [user for user in map(_row, rows) if user]

    async def upsert(self, user: CrmUser) -> None:
        user.updated_at = now_ms()
        placeholders = ", ".join(f"${i + 1}" for i in range(_COUNT))
        updates = ", ".join(
            f"{col}=excluded.{col}"
            for col in COLUMNS.replace(" ", "").split(",")
            if col not in ("crm_user_id", "created_at")
        )
        await self.db.execute(
            f"INSERT INTO crm_user ({COLUMNS}) VALUES ({placeholders}) "
            f"ON CONFLICT (crm_user_id) DO UPDATE SET {updates}",
            *user.values(),
        )

    async def employees(
        self, company_id: str | None, exclude: str, words: list[str], limit: int
    ) -> list[CrmUser]:
        """Active users of a company (all of them when ``company_id`` is None), but one,
        whose name, email or position contains every word (case-insensitive)."""
        where = ["active", "crm_user_id <> $1"]
        args: list[object] = [exclude]
        if company_id is not None:
            args.append(company_id)
            where.append(f"company_id = ${len(args)}")
        for word in words:
            args.append(f"%{_like_escape(word.lower())}%")
            n = len(args)
            where.append(
                f"(LOWER(name) LIKE ${n} ESCAPE '\\' OR LOWER(COALESCE(position, '')) "
                f"LIKE ${n} ESCAPE '\\' OR LOWER(email) LIKE ${n} ESCAPE '\\')"
            )
        args.append(limit)
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM crm_user WHERE {' AND '.join(where)} "
            f"ORDER BY name, crm_user_id LIMIT ${len(args)}",
            *args,
        )
        return [user for user in map(_row, rows) if user]

    async def get_by_mxids(self, mxids: list[str]) -> dict[str, CrmUser]:
        """CRM users behind puppets or linked accounts, keyed by each mxid asked for."""
        if not mxids:
            return {}
        placeholders = ", ".join(f"${i + 1}" for i in range(len(mxids)))
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM crm_user WHERE mxid IN ({placeholders}) "
            f"OR matrix_id IN ({placeholders})",
            *mxids,
        )
        found: dict[str, CrmUser] = {}
        wanted = set(mxids)
        for user in map(_row, rows):
            if user is None:
                continue
            if user.matrix_id in wanted and user.matrix_id not in found:
                found[user.matrix_id] = user
        for user in map(_row, rows):
            if user is not None and user.mxid in wanted:
                found[user.mxid] = user
        return found

    async def in_rooms_of(self, mxid: str) -> dict[str, CrmUser]:
        """CRM users joined (by puppet or linked account) to a room this account joined,
        keyed by each joined mxid, as ``get_by_mxids`` would answer for the members."""
        members = (
            "SELECT m.mxid FROM room_member m WHERE m.membership='join' AND m.room_id IN "
            "(SELECT room_id FROM room_member WHERE mxid=$1 AND membership='join')"
        )
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM crm_user WHERE mxid IN ({members}) OR matrix_id IN ({members})",
            mxid,
        )
        users = [u for u in map(_row, rows) if u is not None]
        found = {u.matrix_id: u for u in users if u.matrix_id}
        found.update({u.mxid: u for u in users})
        return found

    async def applied_presences(self) -> dict[str, str]:
        """Presence the directory last forced on puppets (deactivated users: 'offline')."""
        rows = await self.db.fetch(
            "SELECT crm_user_id, applied_presence FROM crm_user WHERE applied_presence IS NOT NULL"
        )
        return {r["crm_user_id"]: r["applied_presence"] for r in rows}

    async def set_applied_presence(self, crm_user_id: str, presence: str | None) -> None:
        await self.db.execute(
            "UPDATE crm_user SET applied_presence=$2 WHERE crm_user_id=$1", crm_user_id, presence
        )
