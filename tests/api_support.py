"""Helpers for the facade tests: CRM users and project rooms, tokens, an HTTP client."""

from __future__ import annotations

import copy
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from bridge.api.auth import VERIFIER
from bridge.api.direct import ensure_puppet
from bridge.app import BridgeServer
from bridge.chat.media_urls import MEDIA_FIELDS, MEDIA_PATH
from bridge.config import Config
from bridge.context import CONVERSATIONS, IDS, MATRIX, PROJECTS, ROOM_MEMBERS, USERS
from bridge.db.conversation import PROJECT, Conversation
from bridge.db.crm_user import CrmUser
from bridge.db.project import Project
from bridge.devstack.synapse import free_port
from tests.conftest import unique


async def crm_user(
    app: web.Application, name: str | None = None, matrix_id: str | None = None
) -> CrmUser:
    """A CRM user with a registered puppet."""
    crm_user_id = unique("u")
    user = CrmUser(
        crm_user_id=crm_user_id,
        mxid=app[IDS].puppet_mxid(crm_user_id),
        name=name or f"User {crm_user_id}",
        email=f"{crm_user_id}@example.com",
        matrix_id=matrix_id,
    )
    await app[USERS].upsert(user)
    await ensure_puppet(app, user)
    return await app[USERS].get(crm_user_id) or user


async def project_chat(
    app: web.Application, members: list[CrmUser], name: str | None = None
) -> Conversation:
    """A project room created by the bot with these members joined, as the directory makes it."""
    project_id = unique("p")
    matrix = app[MATRIX]
    room_id = await matrix.create_room(
        {"preset": "private_chat", "name": name or f"Project {project_id}"}
    )
    # The project first, as the engine does: from then on the room's own membership events
    # (by the bot and puppets) are not replayed over the records made here, so an invite
    # whose transaction arrives after the join cannot undo it.
    await app[PROJECTS].upsert(
        Project(
            project_id=project_id,
            name=name or f"Project {project_id}",
            emoji="🚀",
            color="bg-blue-500",
            room_id=room_id,
            members=[m.crm_user_id for m in members],
        )
    )
    conversation = await app[CONVERSATIONS].add(room_id, PROJECT, project_id=project_id)
    await app[ROOM_MEMBERS].set(room_id, app[IDS].bot_mxid, "join")
    for member in members:
        await matrix.invite(room_id, member.mxid)
        await matrix.join(room_id, as_user=member.mxid)
        await app[ROOM_MEMBERS].set(room_id, member.mxid, "join")
    return conversation


def token(app: web.Application, user: CrmUser | str, ttl: int = 3600) -> str:
    crm_user_id = user if isinstance(user, str) else user.crm_user_id
    return app[VERIFIER].mint(crm_user_id, ttl)


class Api:
    """A frontend: JSON calls to the facade as one user."""

    def __init__(self, session: aiohttp.ClientSession, base: str, bearer: str | None) -> None:
        self.session = session
        self.base = base
        self.bearer = bearer

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.bearer}"} if self.bearer else {}
        return {**headers, **(extra or {})}

    async def call(
        self, method: str, path: str, body: Any = None, **kw: Any
    ) -> tuple[int, Any, dict[str, str]]:
        headers = self.headers(kw.pop("headers", None))
        if body is not None and "data" not in kw:
            kw["json"] = body
        async with self.session.request(method, self.base + path, headers=headers, **kw) as resp:
            text = await resp.text()
            try:
                data = await resp.json(content_type=None) if text else None
            except ValueError:
                data = text
            return resp.status, data, dict(resp.headers)

    async def get(self, path: str, **kw: Any) -> tuple[int, Any, dict[str, str]]:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any, dict[str, str]]:
        return await self.call("POST", path, body, **kw)


@asynccontextmanager
async def api_for(
    app: web.Application, base: str, user: CrmUser | str | None
) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(session, base, token(app, user) if user is not None else None)


@asynccontextmanager
async def second_facade(main: Config, **overrides: Any) -> AsyncIterator[BridgeServer]:
    """Another facade process on the same database and homeserver, without transactions."""
    config = Config(copy.deepcopy(main.data))
    port = free_port()
    config.set("appservice.port", port)
    config.set("appservice.address", f"http://127.0.0.1:{port}")
    config.set("appservice.receive_transactions", False)
    for dotted, value in overrides.items():
        config.set(dotted, value)
    server = BridgeServer(config)
    await server.start(ping=False)
    try:
        yield server
    finally:
        await server.stop()


def media_and_sends(app: web.Application) -> tuple[int, int]:
    """Media uploads and room sends the bridge made so far: what a refused upload must not add."""
    kinds = app[MATRIX].hs.writes_by_kind
    return kinds["upload"], kinds["send"]


def png(width: int = 2, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def media_path(url: str) -> str:
    """The bare media path of a signed media URL (``/api/chat/media/<server>/<id>``)."""
    return urlsplit(url).path


def unsigned(data: Any) -> Any:
    """JSON data with each signed media URL reduced to its path: what a message object
    holds before it is signed for one reader (bridge/chat/media_urls.py)."""
    if isinstance(data, dict):
        return {
            k: media_path(v)
            if k in MEDIA_FIELDS and isinstance(v, str) and MEDIA_PATH in v
            else unsigned(v)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [unsigned(item) for item in data]
    return data
