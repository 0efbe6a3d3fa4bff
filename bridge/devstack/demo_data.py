"""Demo data for ``python -m bridge dev``: a small CRM directory, pushed as a CRM would.

Users and projects go through the admin API (``/api/admin/v1``), the DM through the REST
facade as one of the users, so the demo exercises the same doors as production. Every step
is idempotent: a second start finds everything in place and creates nothing twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from ..api.auth import JwtVerifier
from .synapse import SynapseProcess
from .workers import SynapseWorkers

log = logging.getLogger("bridge.devstack.demo")


@dataclass(frozen=True)
class DemoUser:
    key: str
    name: str
    role: str


@dataclass(frozen=True)
class DemoProject:
    key: str
    name: str
    emoji: str
    color: str
    members: tuple[str, ...]
    welcome: tuple[tuple[str, str], ...]  # (user key, text) posted once, into an empty room


USERS = (
    DemoUser("alice", "Alice Martin", "admin"),
    DemoUser("bob", "Bob Chen", "manager"),
    DemoUser("carol", "Carol Diaz", "employee"),
    DemoUser("dave", "Dave Okafor", "employee"),
)
PROJECTS = (
    DemoProject(
        "website", "Website relaunch", "🌐", "bg-blue-500", ("alice", "bob", "carol"),
        (("alice", "Kick-off: the new site goes live on the 15th."),
         ("bob", "I'll have the pricing page ready by Friday.")),
    ),
    DemoProject(
        "sales", "Q3 sales push", "📈", "bg-green-500", ("alice", "bob", "dave"),
        (("dave", "Three demos booked this week."),),
    ),
)  # fmt: skip
DIRECT = ("bob", "carol")
# Alice's own Matrix account is linked to her CRM user: log in with Element as her.
LINKED = "alice"


@dataclass
class DemoLogins:
    """What the dev stack prints: two /demo links and the linked account's Element login."""

    links: list[tuple[DemoUser, str]]
    matrix_user: str
    matrix_password: str | None


class DemoSeeder:
    def __init__(
        self,
        bridge_url: str,
        admin_token: str,
        verifier: JwtVerifier,
        synapse: SynapseProcess | SynapseWorkers,
        state_dir: Path,
        prefix: str = "demo-",
    ) -> None:
        self.bridge_url = bridge_url.rstrip("/")
        self.admin = {"Authorization": f"Bearer {admin_token}"}
        self.verifier = verifier
        self.synapse = synapse
        self.password_file = state_dir / f"{prefix}matrix-password"
        self.prefix = prefix

    def crm_id(self, key: str) -> str:
        return f"{self.prefix}{key}"

    @property
    def matrix_localpart(self) -> str:
        return self.crm_id(LINKED)

    @property
    def matrix_id(self) -> str:
        return f"@{self.matrix_localpart}:{self.synapse.server_name}"

    async def seed(self) -> DemoLogins:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            self.http = http
            password = await self._matrix_account()
            for user in USERS:
                body: dict[str, Any] = {
                    "name": user.name,
                    "email": f"{user.key}@demo.example",
                    "role": user.role,
                }
                if user.key == LINKED:
                    body["matrixId"] = self.matrix_id
                await self._admin("PUT", f"/users/{self.crm_id(user.key)}", body)
            rooms = []
            for project in PROJECTS:
                answer = await self._admin(
                    "PUT",
                    f"/projects/{self.crm_id(project.key)}",
                    {
                        "name": project.name,
                        "emoji": project.emoji,
                        "color": project.color,
                        "members": [self.crm_id(m) for m in project.members],
                        "createdBy": self.crm_id(project.members[0]),
                    },
                )
                rooms.append(answer["project"]["roomId"])
            if password is not None:
                await self._join_as_linked_account(password, rooms)
            await self._direct(*DIRECT)
            await self._welcome()
        by_key = {u.key: u for u in USERS}
        links = [
            (by_key[key], f"{self.bridge_url}/demo/?as={quote(self.crm_id(key))}")
            for key in ("alice", "bob")
        ]
        return DemoLogins(links, self.matrix_id, password)

    async def _matrix_account(self) -> str | None:
        """The linked account, created once with a password kept beside the dev state."""
        if self.password_file.exists():
            return self.password_file.read_text().strip()
        import secrets

        password = secrets.token_urlsafe(12)
        try:
            await self.synapse.register_user(self.matrix_localpart, password)
        except RuntimeError as e:
            if "M_USER_IN_USE" not in str(e):
                raise
            log.warning(
                "%s exists but its password file %s is gone; remove the dev state to start over",
                self.matrix_id,
                self.password_file,
            )
            return None
        self.password_file.write_text(password)
        return password

    async def _admin(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.bridge_url}/api/admin/v1{path}"
        async with self.http.request(method, url, json=body, headers=self.admin) as resp:
            data = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"{method} {path}: {resp.status} {data}")
            return data

    async def _as_user(self, key: str, method: str, path: str, body: Any = None) -> Any:
        token = self.verifier.mint(self.crm_id(key), 300)
        headers = {"Authorization": f"Bearer {token}"}
        url = f"{self.bridge_url}{path}"
        async with self.http.request(method, url, json=body, headers=headers) as resp:
            data = await resp.json()
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path} as {key}: {resp.status} {data}")
            return data

    async def _join_as_linked_account(self, password: str, rooms: list[str]) -> None:
        """Accept the invites the bridge sent the linked account, so Element opens on the
        rooms themselves (joining a room already joined changes nothing)."""
        hs = self.synapse.url
        login = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": self.matrix_localpart},
            "password": password,
            "initial_device_display_name": "bridge dev stack",
        }
        async with self.http.post(f"{hs}/_matrix/client/v3/login", json=login) as resp:
            if resp.status != 200:
                log.warning("Cannot log in as %s: %s", self.matrix_id, await resp.text())
                return
            headers = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
        try:
            for room_id in rooms:
                url = f"{hs}/_matrix/client/v3/join/{quote(room_id)}"
                async with self.http.post(url, json={}, headers=headers) as resp:
                    if resp.status != 200:
                        log.warning("%s cannot join %s: %s", self.matrix_id, room_id, resp.status)
        finally:
            async with self.http.post(f"{hs}/_matrix/client/v3/logout", headers=headers):
                pass

    async def _direct(self, key: str, other: str) -> None:
        await self._as_user(key, "POST", "/api/chat/direct/create", {"userId": self.crm_id(other)})

    async def _welcome(self) -> None:
        """A first message or two in each project room that has none yet."""
        for project in PROJECTS:
            conversations = await self._as_user(project.members[0], "GET", "/api/chat/project")
            project_id = self.crm_id(project.key)
            match = [c for c in conversations if (c.get("project") or {}).get("_id") == project_id]
            if not match or match[0].get("lastMessage"):
                continue
            for n, (key, text) in enumerate(project.welcome):
                body = {
                    "conversationId": match[0]["_id"],
                    "content": text,
                    "clientMessageId": f"{self.prefix}{project.key}-welcome-{n}",
                }
                await self._as_user(key, "POST", "/api/chat/send", body)
