"""Helpers for the relation tests: directory people with roles, Element users in a project."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from nio import AsyncClient, JoinResponse, RoomGetEventResponse

from bridge.context import USERS
from bridge.db.crm_user import CrmUser
from tests.conftest import unique
from tests.helpers import eventually
from tests.realtime_support import Directory

NODE_DIR = Path(__file__).parent / "node"


async def person(directory: Directory, name: str, role: str, matrix_id: str | None = None) -> str:
    crm_user_id = unique("u")
    body: dict[str, Any] = {"name": name, "email": f"{crm_user_id}@example.com", "role": role}
    if matrix_id:
        body["matrixId"] = matrix_id
    await directory._put(f"/users/{crm_user_id}", body)
    return crm_user_id


async def users(app: Any, *crm_user_ids: str) -> list[CrmUser]:
    found = [await app[USERS].get(i) for i in crm_user_ids]
    assert all(found)
    return found  # type: ignore[return-value]


async def accept_invite(client: AsyncClient, room_id: str) -> None:
    async def invited() -> bool:
        await client.sync(timeout=0)
        return room_id in client.invited_rooms or room_id in client.rooms

    await eventually(invited)
    if room_id not in client.rooms:
        assert isinstance(await client.join(room_id), JoinResponse)


async def raw_event(client: AsyncClient, room_id: str, event_id: str) -> dict[str, Any]:
    """The event as the homeserver serves it to a Matrix client."""
    resp = await client.room_get_event(room_id, event_id)
    assert isinstance(resp, RoomGetEventResponse), resp
    return resp.event.source


async def relations_of(client: AsyncClient, room_id: str, event_id: str) -> list[dict[str, Any]]:
    """GET /relations, as Element reads a message's reactions and edits."""
    path = f"/_matrix/client/v1/rooms/{room_id}/relations/{event_id}"
    resp = await client.send(
        "GET", path, headers={"Authorization": f"Bearer {client.access_token}"}
    )
    body = await resp.json()
    return body.get("chunk", [])


class NodeWatcher:
    """tests/node/relations.mjs: the npm client recording relation events."""

    def __init__(self, url: str, token: str) -> None:
        self.env = {**os.environ, "BRIDGE_URL": url, "TOKEN": token}
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[dict[str, Any]] = []

    async def start(self) -> NodeWatcher:
        self.proc = await asyncio.create_subprocess_exec(
            "node", str(NODE_DIR / "relations.mjs"), env=self.env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await self.until("connected")
        return self

    async def until(self, event: str) -> list[dict[str, Any]]:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout=60)
            assert raw, f"node exited early: {self.lines}"
            line = json.loads(raw)
            assert line["event"] != "failed", [*self.lines, line]
            self.lines.append(line)
            if line["event"] == event:
                return self.lines

    async def stop_on(self, message_id: str) -> None:
        """Exit once this message's message_deleted arrives (say so before deleting it)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{message_id}\n".encode())
        await self.proc.stdin.drain()

    async def done(self) -> list[dict[str, Any]]:
        assert self.proc is not None
        lines = await self.until("done")
        assert await asyncio.wait_for(self.proc.wait(), timeout=10) == 0
        return lines

    def of(self, event: str) -> list[Any]:
        return [line["data"] for line in self.lines if line["event"] == event]

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
