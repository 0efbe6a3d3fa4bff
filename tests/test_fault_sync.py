"""Kill the bridge with SIGKILL half-way through a big directory sync, restart it, re-run the
same snapshot: the rooms converge, and Synapse's own room timelines show no duplicate
invite, no second join and no kick or leave for anybody.

Unlike tests/test_crm_sync.py (which cancels the sync task in-process), the process dies
here: nothing after the last committed write survives, including rooms created but not yet
recorded, and the transactions Synapse was delivering.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bridge.ids import IdMapper
from tests.conftest import unique
from tests.fault_support import FaultStack, fault_stack
from tests.fault_traffic import FaultReport, probe_room, room_timeline
from tests.helpers import eventually

USERS, PROJECTS, MEMBERS = 60, 6, 15


def snapshot() -> dict[str, Any]:
    tag = unique("k")
    users = [
        {"id": f"{tag}u{i}", "name": f"User {i}", "email": f"u{i}@example.com",
         "role": ("admin", "manager", "employee", "employee")[i % 4]}
        for i in range(USERS)
    ]  # fmt: skip
    projects = [
        {"id": f"{tag}p{j}", "name": f"Project {j}", "description": f"About {j}",
         "members": [users[(j * 10 + k) % USERS]["id"] for k in range(MEMBERS)],
         "createdBy": users[j * 10]["id"]}
        for j in range(PROJECTS)
    ]  # fmt: skip
    return {"users": users, "projects": projects}


class Admin:
    def __init__(self, session: aiohttp.ClientSession, fs: FaultStack) -> None:
        self.session, self.base = session, fs.url + "/api/admin/v1"
        self.headers = {"Authorization": f"Bearer {fs.config['admin_api.token']}"}

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        async with self.session.request(
            method, self.base + path, headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=600), **kwargs,
        ) as resp:  # fmt: skip
            return resp.status, await resp.json()


async def test_sync_killed_half_way_converges_without_churn(tmp_path: Path) -> None:
    body = snapshot()
    report = FaultReport(f"kill -9 during sync of {USERS} users, {PROJECTS}x{MEMBERS} members")
    async with fault_stack(tmp_path, redis="private") as fs, aiohttp.ClientSession() as session:
        admin, ids = Admin(session, fs), IdMapper.from_config(fs.config)
        began = time.monotonic()
        status, job = await admin.call("POST", "/sync", params={"wait": "false"}, json=body)
        assert status == 202, job

        async def halfway() -> dict[str, Any] | None:
            status, state = await admin.call("GET", f"/sync/jobs/{job['job']}")
            assert status == 200 and state["state"] == "running", state
            return state if state["total"] and state["done"] >= state["total"] // 2 else None

        at_kill = await eventually(halfway, timeout=300, interval=0.05)
        fs.bridge.kill()
        report.extra["killed_at"] = f"{at_kill['done']}/{at_kill['total']} writes"
        report.extra["killed_after"] = f"{time.monotonic() - began:.1f}s"
        restarted = time.monotonic()
        await fs.bridge.start()
        report.extra["bridge_ready"] = f"{time.monotonic() - restarted:.1f}s"
        status, rerun = await admin.call("POST", "/sync", json=body)
        assert status == 200 and not rerun["errors"], rerun
        report.time_to_recover = time.monotonic() - restarted
        applied = rerun["applied"]
        report.extra["rerun_writes"] = rerun["writes"]["made"]
        report.extra["rerun_kicks"] = len(applied["kick"]) + len(applied["leave"])
        assert applied["kick"] == [] and applied["leave"] == [], applied
        assert applied["projects"]["archive"] == [] and applied["users"]["deactivate"] == []

        # A third run has nothing left to do.
        status, again = await admin.call("POST", "/sync", json=body)
        assert status == 200 and again["writes"]["planned"] == 0, again["plan"]

        churn: list[str] = []
        joins = Counter[str]()
        for p in body["projects"]:
            status, project = await admin.call("GET", f"/projects/{p['id']}")
            assert status == 200, project
            room_id = project["roomId"]
            wanted = {ids.puppet_mxid(m) for m in p["members"]}
            events = await room_timeline(
                fs.synapse.url, fs.config["appservice.as_token"], room_id, {"m.room.member"}
            )
            joined: dict[str, str] = {}
            per_user = Counter[tuple[str, str]]()
            for event in events:
                membership = event["content"]["membership"]
                joined[event["state_key"]] = membership
                per_user[(event["state_key"], membership)] += 1
            assert {m for m, s in joined.items() if s == "join"} == wanted | {ids.bot_mxid}
            for (mxid, membership), n in per_user.items():
                joins[membership] += n
                if membership in ("leave", "ban") or n > 1:
                    churn.append(f"{p['id']} {mxid} {membership}x{n}")
        report.extra["membership_events"] = dict(joins)
        report.duplicated = churn
        # Each project has one room: a room created before the kill was adopted, not made
        # again (this Synapse is the test's own, so the bot is in nothing else but the
        # probe room of its own, matrix/probe.py).
        as_token = {"Authorization": f"Bearer {fs.config['appservice.as_token']}"}
        client_api = f"{fs.synapse.url}/_matrix/client/v3"
        async with session.get(f"{client_api}/joined_rooms", headers=as_token) as resp:
            rooms = (await resp.json())["joined_rooms"]
        probe = await probe_room(fs.synapse.url, fs.config["appservice.as_token"], ids)
        rooms = [r for r in rooms if r != probe]
        report.extra["rooms"] = len(rooms)
        assert len(rooms) == PROJECTS, rooms
    print(report.line())
    assert not churn, churn
    assert joins["invite"] <= PROJECTS * MEMBERS and joins["join"] == PROJECTS * (MEMBERS + 1)
