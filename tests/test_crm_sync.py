"""Full-snapshot reconciliation: idempotence, dry runs, validation, the removal guard,
crash recovery and the operator CLI.

A full snapshot describes the whole directory, so these tests each run their own bridge
(own PostgreSQL schema, same Synapse and appservice registration) instead of the shared
one, whose directory other tests fill.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.app import BridgeServer
from bridge.config import Config
from bridge.context import HOMESERVER, IDS, MATRIX, PROJECTS, ROOM_MEMBERS, USERS
from bridge.crm import operations
from bridge.crm.pull import pull_once
from bridge.crm.rooms import read_room
from bridge.crm.snapshot import parse_snapshot
from bridge.devstack.synapse import free_port

from .conftest import create_schema, drop_schema, postgres_args, unique

pytestmark = pytest.mark.integration


@dataclass
class Bridge:
    server: BridgeServer
    config_path: Path

    @property
    def app(self):
        return self.server.app

    @property
    def url(self) -> str:
        return self.server.config["appservice.address"]

    async def sync(
        self, body: Any, *, raw: bytes | None = None, **params: str
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.server.config['admin_api.token']}"}
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.post(
                f"{self.url}/api/admin/v1/sync",
                json=None if raw is not None else body,
                data=raw,
                params=params,
            ) as resp,
        ):
            return resp.status, await resp.json()


@pytest.fixture
async def bridge(stack, tmp_path: Path) -> AsyncIterator[Bridge]:
    schema = await create_schema()
    config = Config(copy.deepcopy(stack.config.data))
    port = free_port()
    config.set("appservice.port", port)
    config.set("appservice.address", f"http://127.0.0.1:{port}")
    # Synapse delivers transactions to the session bridge; this one only writes.
    config.set("appservice.receive_transactions", False)
    config.set("database.args", postgres_args(schema))
    config_path = tmp_path / "config.yaml"
    config.save(config_path)
    server = BridgeServer(config)
    await server.start(ping=False)
    try:
        yield Bridge(server, config_path)
    finally:
        await server.stop()
        await drop_schema(schema)


def directory(n_users: int = 4, n_projects: int = 2) -> dict[str, Any]:
    tag = unique("s")
    users = [
        {
            "id": f"{tag}u{i}",
            "name": f"User {i}",
            "email": f"u{i}@example.com",
            "role": ("admin", "manager", "employee")[i % 3],
        }
        for i in range(n_users)
    ]
    projects = [
        {
            "id": f"{tag}p{j}",
            "name": f"Project {j}",
            "description": f"About {j}",
            "emoji": "📁",
            "color": "bg-blue-500",
            "members": [u["id"] for u in users[j % 2 :: 1][:3]],
            "createdBy": users[0]["id"],
        }
        for j in range(n_projects)
    ]
    return {"users": users, "projects": projects}


async def room_matches(bridge: Bridge, snapshot: dict[str, Any]) -> None:
    """Every project room, read from the homeserver, is what the snapshot says."""
    app, ids = bridge.app, bridge.app[IDS]
    roles = {u["id"]: u["role"] for u in snapshot["users"]}
    active = {u["id"] for u in snapshot["users"] if u.get("active", True)}
    for p in snapshot["projects"]:
        project = await app[PROJECTS].get(p["id"])
        actual = await read_room(app[MATRIX], project.room_id)
        assert actual.digest["name"] == p["name"]
        assert actual.digest["topic"] == p.get("description", "")
        joined = {m for m, s in actual.members.items() if s == "join"} - {ids.bot_mxid}
        assert joined == {ids.puppet_mxid(m) for m in p["members"] if m in active}
        levels = actual.digest["power_levels"]["users"]
        for m in p["members"]:
            expected = {"admin": 100, "manager": 50}.get(roles[m])
            assert levels.get(ids.puppet_mxid(m)) == expected


async def test_second_application_makes_zero_writes_and_dry_run_matches(bridge) -> None:
    snapshot = directory()
    status, dry = await bridge.sync(snapshot, dryRun="true")
    assert status == 200 and dry["dryRun"] is True
    assert len(dry["plan"]["projects"]["create"]) == 2
    assert await bridge.app[USERS].all() == []  # a dry run changes nothing
    status, real = await bridge.sync(snapshot)
    assert status == 200 and not real["errors"], real
    assert real["applied"] == dry["plan"]
    assert real["writes"]["made"] == dry["writes"]["planned"]
    await room_matches(bridge, snapshot)

    before = bridge.app[HOMESERVER].writes
    status, again = await bridge.sync(snapshot)
    assert status == 200 and again["writes"] == {"planned": 0, "made": 0}
    assert bridge.app[HOMESERVER].writes == before

    # A change: the dry run's plan is exactly what the real run then does.
    users = snapshot["users"]
    users[2]["role"] = "manager"
    snapshot["projects"][0]["name"] = "Renamed"
    snapshot["projects"][0]["members"] = [users[0]["id"], users[2]["id"], users[3]["id"]]
    status, dry = await bridge.sync(snapshot, dryRun="true")
    assert dry["plan"]["projects"]["rename"] == [snapshot["projects"][0]["id"]]
    assert dry["plan"]["kick"] and dry["plan"]["invite"] and dry["plan"]["powerLevels"]
    status, real = await bridge.sync(snapshot)
    assert real["applied"] == dry["plan"] and not real["errors"]
    assert real["writes"]["made"] == dry["writes"]["planned"]
    await room_matches(bridge, snapshot)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {
                "users": [
                    {"id": "a", "name": "A", "email": "a@x", "role": "boss"},
                    {"id": "a", "name": "A2", "email": "a@x", "role": "admin"},
                    {"id": 5.5, "name": 3, "email": "b@x", "role": "employee", "active": "y"},
                ],
                "projects": [
                    {"id": "p", "name": "P", "members": ["a", "ghost"], "createdBy": "a"},
                    {"id": "p", "name": "P", "members": "a"},
                ],
            },
            [
                "users[0].role",
                "users[1].id: duplicate",
                "users[2].id",
                "users[2].name",
                "users[2].active",
                "projects[0].members[1]: unknown user 'ghost'",
                "projects[1].members",
            ],
        ),
        ({"users": {}, "projects": None}, ["users: required", "projects: required"]),
        ([], ["snapshot: must be an object"]),
    ],
)
async def test_bad_snapshots_get_400_with_every_problem_and_nothing_applied(
    bridge, body, expected
) -> None:
    before = bridge.app[HOMESERVER].writes
    status, resp = await bridge.sync(body)
    assert status == 400 and resp["errcode"] == "M_INVALID_PARAM"
    for fragment in expected:
        assert any(fragment in problem for problem in resp["problems"]), (fragment, resp)
    assert bridge.app[HOMESERVER].writes == before
    assert await bridge.app[USERS].all() == [] and await bridge.app[PROJECTS].all() == []


async def test_bad_json_gets_400(bridge) -> None:
    status, resp = await bridge.sync(None, raw=b'{"users": [')
    assert status == 400 and resp["errcode"] == "M_NOT_JSON"


async def test_empty_or_partial_snapshot_removes_nobody_without_force(bridge) -> None:
    snapshot = directory()
    status, resp = await bridge.sync(snapshot)
    assert status == 200 and not resp["errors"]
    writes = bridge.app[HOMESERVER].writes

    status, resp = await bridge.sync({"users": [], "projects": []})
    assert status == 200
    assert resp["withheld"] == {"deactivations": 4, "archives": 2}
    assert resp["writes"]["made"] == 0 and bridge.app[HOMESERVER].writes == writes
    await room_matches(bridge, snapshot)

    # Partial: one user and every project emptied of members; still nobody removed.
    partial = {
        "users": snapshot["users"][:1],
        "projects": [{**p, "members": []} for p in snapshot["projects"]],
    }
    status, resp = await bridge.sync(partial)
    assert status == 200 and resp["withheld"]["deactivations"] == 3
    assert resp["withheld"]["removals"] > 0
    assert resp["applied"]["kick"] == [] and resp["applied"]["leave"] == []
    for u in snapshot["users"]:
        assert (await bridge.app[USERS].get(u["id"])).active
    await room_matches(bridge, snapshot)

    # Forced, the empty snapshot is a decision: everyone deactivated, every project archived.
    status, resp = await bridge.sync({"users": [], "projects": []}, force="true")
    assert status == 200 and not resp["errors"] and resp["withheld"] == {}
    assert sorted(resp["applied"]["users"]["deactivate"]) == sorted(
        u["id"] for u in snapshot["users"]
    )
    assert len(resp["applied"]["projects"]["archive"]) == 2
    for p in snapshot["projects"]:
        project = await bridge.app[PROJECTS].get(p["id"])
        actual = await read_room(bridge.app[MATRIX], project.room_id)
        assert project.archived and actual.digest["power_levels"]["events_default"] == 100
        joined = {m for m, s in actual.members.items() if s == "join"}
        assert joined == {bridge.app[IDS].bot_mxid}


async def test_crash_mid_sync_then_rerun_converges(bridge) -> None:
    app = bridge.app
    body = directory(n_users=6, n_projects=3)
    snapshot = parse_snapshot(body, ["admin", "manager", "employee"])
    task: asyncio.Task | None = None

    def crash_after_some_writes(done: int, total: int) -> None:
        if done >= total // 2 and task is not None:
            task.cancel()

    task = asyncio.create_task(operations.sync(app, snapshot, progress=crash_after_some_writes))
    with pytest.raises(asyncio.CancelledError):
        await task
    status, resp = await bridge.sync(body)
    assert status == 200 and not resp["errors"], resp
    await room_matches(bridge, body)
    status, resp = await bridge.sync(body)
    assert resp["writes"] == {"planned": 0, "made": 0}
    # The rooms created before the crash were adopted, not duplicated.
    for p in body["projects"]:
        room_id = (await app[PROJECTS].get(p["id"])).room_id
        assert await app[MATRIX].resolve_alias(app[IDS].project_alias(p["id"])) == room_id
        assert (await app[ROOM_MEMBERS].of_room(room_id))[app[IDS].bot_mxid] == "join"


def run_cli(bridge: Bridge, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "-c", str(bridge.config_path), "sync", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "BRIDGE_LOGGING__ROOT__LEVEL": "WARNING"},
    )


async def test_cli_dry_run_then_sync_with_progress_and_summary(bridge, tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    body = directory()
    path.write_text(json.dumps(body))
    dry = await asyncio.to_thread(run_cli, bridge, str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "plan (dry run" in dry.stdout and "projects create" in dry.stdout
    assert await bridge.app[PROJECTS].all() == []
    real = await asyncio.to_thread(run_cli, bridge, str(path))
    assert real.returncode == 0, real.stderr
    assert "writes" in real.stderr and "[####" in real.stderr  # the progress bar
    made = [line for line in real.stdout.splitlines() if "homeserver writes made" in line]
    assert made and int(made[0].split()[-1]) > 0
    await room_matches(bridge, body)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"users": [{"id": "x"}], "projects": []}))
    refused = await asyncio.to_thread(run_cli, bridge, str(bad))
    assert refused.returncode == 2 and "users[0].role" in refused.stderr


async def test_replacing_the_whole_directory_converges(bridge) -> None:
    first, second = directory(), directory()
    assert (await bridge.sync(first))[0] == 200
    status, resp = await bridge.sync(second, force="true")
    assert status == 200 and not resp["errors"], resp
    status, again = await bridge.sync(second, force="true")
    assert again["writes"] == {"planned": 0, "made": 0}, again["plan"]


async def test_pull_mode_reads_the_same_snapshot_from_the_crm(bridge, aiohttp_server) -> None:
    body = directory(n_users=3, n_projects=1)

    async def export(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer crm-secret":
            return web.json_response({"error": "no"}, status=401)
        return web.json_response(body)

    crm = web.Application()
    crm.router.add_get("/directory", export)
    server = await aiohttp_server(crm)
    result = await pull_once(bridge.app, str(server.make_url("/directory")), "crm-secret")
    assert not result["errors"] and result["applied"]["projects"]["create"]
    await room_matches(bridge, body)
    again = await pull_once(bridge.app, str(server.make_url("/directory")), "crm-secret")
    assert again["writes"] == {"planned": 0, "made": 0}


async def test_a_sync_jobs_status_is_read_through_either_process(bridge) -> None:
    """``?wait=false`` on one process; the job is polled through another on the same
    database (its status lives there), and through the first."""
    config = Config(copy.deepcopy(bridge.server.config.data))
    port = free_port()
    config.set("appservice.port", port)
    config.set("appservice.address", f"http://127.0.0.1:{port}")
    other = BridgeServer(config)
    await other.start(ping=False)
    headers = {"Authorization": f"Bearer {config['admin_api.token']}"}
    snapshot = directory(n_users=6, n_projects=3)
    try:
        status, started = await bridge.sync(snapshot, wait="false")
        assert status == 202, started
        seen: dict[str, list[dict[str, Any]]] = {"first": [], "other": []}
        async with aiohttp.ClientSession(headers=headers) as session:

            async def poll(name: str, url: str) -> dict[str, Any]:
                async with session.get(f"{url}/api/admin/v1/sync/jobs/{started['job']}") as r:
                    assert r.status == 200, await r.text()
                    job = await r.json()
                seen[name].append(job)
                return job

            for _ in range(600):
                jobs = [await poll("other", f"http://127.0.0.1:{port}"),
                        await poll("first", bridge.url)]  # fmt: skip
                if all(j["state"] != "running" for j in jobs):
                    break
                await asyncio.sleep(0.1)
            async with session.get(f"http://127.0.0.1:{port}/api/admin/v1/sync/jobs/nope") as r:
                missing = r.status, await r.json()
    finally:
        await other.stop()
    done_here, done_there = seen["first"][-1], seen["other"][-1]
    assert done_there["state"] == "done" and done_there == done_here, (done_there, done_here)
    assert not done_there["result"]["errors"] and done_there["done"] == done_there["total"] > 0
    assert done_there["result"]["writes"]["made"] == done_there["total"]
    assert missing[0] == 404 and missing[1]["errcode"] == "M_NOT_FOUND", missing
    await room_matches(bridge, snapshot)
