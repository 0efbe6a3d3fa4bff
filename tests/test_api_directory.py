"""The facade on top of the directory side: users and projects pushed through the admin API."""

from __future__ import annotations

import aiohttp
import pytest

from bridge.context import EVENT_INDEX
from tests.api_support import api_for
from tests.conftest import unique
from tests.helpers import eventually

pytestmark = pytest.mark.integration


async def admin_put(stack, path: str, body: dict) -> dict:
    headers = {"Authorization": f"Bearer {stack.config['admin_api.token']}"}
    async with (
        aiohttp.ClientSession() as session,
        session.put(f"{stack.bridge_url}/api/admin/v1{path}", json=body, headers=headers) as resp,
    ):
        data = await resp.json()
        assert resp.status == 200, data
        return data


async def test_project_pushed_by_the_crm_is_a_conversation(stack) -> None:
    app = stack.app
    ann, ben, cy = unique("ann"), unique("ben"), unique("cy")
    for crm_user_id, name in ((ann, "Ann"), (ben, "Ben"), (cy, "Cy")):
        await admin_put(
            stack, f"/users/{crm_user_id}",
            {"name": name, "email": f"{crm_user_id}@example.com", "role": "employee"},
        )  # fmt: skip
    project_id = unique("proj")
    await admin_put(
        stack, f"/projects/{project_id}",
        {"name": "Orion", "emoji": "🛰", "color": "bg-red-500", "members": [ann, ben]},
    )  # fmt: skip
    async with (
        api_for(app, stack.bridge_url, ann) as a,
        api_for(app, stack.bridge_url, ben) as b,
        api_for(app, stack.bridge_url, cy) as c,
    ):
        listed = (await a.get("/api/chat/project"))[1]
        orion = [conv for conv in listed if conv["project"]["_id"] == project_id]
        assert len(orion) == 1, listed
        conv = orion[0]
        assert conv["name"] == "Orion" and conv["project"]["emoji"] == "🛰"
        assert {p["_id"] for p in conv["participants"]} == {ann, ben}
        projects = (await a.get("/api/projects"))[1]
        mine = next(p for p in projects if p["_id"] == project_id)
        assert mine["conversationId"] == conv["_id"]
        assert {m["_id"] for m in mine["members"]} == {ann, ben}

        status, message, _ = await a.post(
            "/api/chat/send", {"conversationId": conv["_id"], "content": "kickoff"}
        )
        assert status == 201
        await eventually(lambda: app[EVENT_INDEX].get(message["eventId"]))
        theirs = [x for x in (await b.get("/api/chat/conversations"))[1] if x["_id"] == conv["_id"]]
        assert theirs[0]["unreadCount"] == 1 and theirs[0]["lastMessage"]["content"] == "kickoff"
        # Cy is not a member: the conversation does not exist for them.
        status, error, _ = await c.get(f"/api/chat/messages/{conv['_id']}")
        assert status == 404 and error["message"] == "Conversation not found"
        assert conv["_id"] not in {x["_id"] for x in (await c.get("/api/chat/conversations"))[1]}
        users = {u["_id"]: u for u in (await c.get("/api/users"))[1]}
        assert {ann, ben} <= set(users) and cy not in users
        assert set(users[ann]) >= {"_id", "name", "email", "avatar", "isOnline", "lastSeen"}

        # Deactivated in the CRM: refused from then on.
        await admin_put(
            stack, f"/users/{ben}",
            {"name": "Ben", "email": f"{ben}@example.com", "role": "employee", "active": False},
        )  # fmt: skip

        async def refused() -> bool:
            return (await b.get("/api/chat/conversations"))[0] == 403

        await eventually(refused, timeout=5)
