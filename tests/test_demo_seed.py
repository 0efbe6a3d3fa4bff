"""The dev stack's demo directory: pushed through the admin API, and the same after a rerun."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nio import AsyncClient, JoinedRoomsResponse, LoginResponse

from bridge.api.auth import VERIFIER
from bridge.context import USERS
from bridge.devstack.demo_data import PROJECTS, DemoSeeder
from bridge.devstack.demo_data import USERS as DEMO_USERS
from bridge.ids import conversation_id_for_room
from tests.api_support import api_for
from tests.conftest import unique

pytestmark = pytest.mark.integration


async def _what_users_see(stack, prefix: str) -> dict[str, Any]:
    """Every demo user's conversations, with their participants and full history."""
    seen: dict[str, Any] = {}
    for user in DEMO_USERS:
        async with api_for(stack.app, stack.bridge_url, prefix + user.key) as api:
            status, conversations, _ = await api.get("/api/chat/conversations")
            assert status == 200
            entries = []
            for c in conversations:
                _, page, _ = await api.get(f"/api/chat/messages/{c['_id']}?limit=100")
                entries.append(
                    (
                        c["_id"],
                        c["type"],
                        c["name"],
                        sorted(p["_id"] for p in c["participants"]),
                        [(m["sender"]["_id"], m["content"]) for m in page["messages"]],
                    )
                )
            seen[user.key] = sorted(entries)
    return seen


async def test_demo_directory_is_seeded_once_and_kept(stack, tmp_path: Path) -> None:
    prefix = unique("demo") + "-"
    seeder = DemoSeeder(
        stack.bridge_url,
        stack.config["admin_api.token"],
        stack.app[VERIFIER],
        stack.synapse,
        tmp_path,
        prefix=prefix,
    )
    first = await seeder.seed()

    # Users with their roles; Alice linked to a Matrix account of her own.
    for spec in DEMO_USERS:
        user = await stack.app[USERS].get(prefix + spec.key)
        assert user is not None and user.role == spec.role and user.name == spec.name
    alice = await stack.app[USERS].get(prefix + "alice")
    assert alice.matrix_id == first.matrix_user == f"@{prefix}alice:localhost"
    assert [url for _, url in first.links] == [
        f"{stack.bridge_url}/demo/?as={prefix}alice",
        f"{stack.bridge_url}/demo/?as={prefix}bob",
    ]

    # Two projects and a DM, each project with its welcome messages.
    seen = await _what_users_see(stack, prefix)
    bob = seen["bob"]
    assert sorted(c[1] for c in bob) == ["direct", "project", "project"]
    assert {c[2] for c in bob if c[1] == "project"} == {p.name for p in PROJECTS}
    direct = next(c for c in bob if c[1] == "direct")
    assert direct[3] == sorted([prefix + "bob", prefix + "carol"])
    website = next(c for c in bob if c[2] == "Website relaunch")
    assert [text for _, text in website[4]] == [text for _, text in PROJECTS[0].welcome]

    # The printed Element login works, and the account already sits in Alice's rooms.
    element = AsyncClient(stack.synapse.url, first.matrix_user)
    try:
        assert isinstance(await element.login(first.matrix_password), LoginResponse)
        joined = await element.joined_rooms()
        assert isinstance(joined, JoinedRoomsResponse)
        rooms = {c[0] for c in seen["alice"] if c[1] == "project"}
        # Conversation ids are room ids made URL-safe (not always the body: ids.py).
        assert {conversation_id_for_room(r) for r in joined.rooms} >= rooms
    finally:
        await element.close()

    # A second start: same password, nothing new, nothing twice.
    second = await seeder.seed()
    assert second.matrix_password == first.matrix_password
    assert await _what_users_see(stack, prefix) == seen
