"""Benchmark: an initial directory sync and an unchanged re-sync, against the same homeserver
calls made directly by a minimal script, in the same run (Synapse on PostgreSQL).

    .venv/bin/python -m bench.directory [--users 500] [--projects 50] [--members 20]

The direct script does exactly what the bridge must do for a new directory: register each
puppet and set its display name, then per project one createRoom (name, topic, alias, link
state, power levels, invites) and one join per member, with the same concurrency. The
bridge additionally validates the snapshot, plans against its database, checks each new
alias, and records everything it applied.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import Deadline, base_parser, bench_stack, report
from bridge.context import CONFIG, DISPATCHER, HOMESERVER, IDS
from bridge.crm.reconcile import project_spec_of
from bridge.crm.rooms import create_room_body, creators_have_implicit_power, desired_room
from bridge.crm.snapshot import parse_snapshot
from bridge.db.project import Project

C = "/_matrix/client/v3"


def make_snapshot(tag: str, users: int, projects: int, members: int) -> dict[str, Any]:
    roles = ("admin", "manager", *["employee"] * 8)
    user_list = [
        {"id": f"{tag}u{i}", "name": f"User {i}", "email": f"u{i}@example.com",
         "role": roles[i % len(roles)]}
        for i in range(users)
    ]  # fmt: skip
    project_list = []
    for j in range(projects):
        start = (j * members) % max(users, 1)
        ids = [user_list[(start + k) % users]["id"] for k in range(min(members, users))]
        project_list.append(
            {"id": f"{tag}p{j}", "name": f"Project {j}", "description": f"Project {j} topic",
             "emoji": "📁", "color": "bg-blue-500", "members": ids, "createdBy": ids[0]}
        )  # fmt: skip
    return {"users": user_list, "projects": project_list}


async def direct_calls(
    base: str, as_token: str, app: Any, snapshot: dict[str, Any], concurrency: int
) -> tuple[float, int]:
    """The same homeserver calls, issued straight from a script; returns (seconds, calls)."""
    ids, config = app[IDS], app[CONFIG]
    parsed = parse_snapshot(snapshot, list(config["power_levels"]))
    caps = await app[HOMESERVER].get(f"{C}/capabilities")
    implicit = creators_have_implicit_power(caps["capabilities"]["m.room_versions"]["default"])
    levels = {str(k): int(v) for k, v in config["power_levels"].items()}
    slots = asyncio.Semaphore(concurrency)
    calls = 0
    headers = {"Authorization": f"Bearer {as_token}"}
    async with aiohttp.ClientSession(base_url=base, headers=headers) as session:

        async def call(method: str, path: str, body: Any, as_user: str | None = None) -> Any:
            nonlocal calls
            params = {"user_id": as_user} if as_user else None
            async with slots, session.request(method, path, json=body, params=params) as resp:
                calls += 1
                data = await resp.json()
                if resp.status >= 300:
                    raise RuntimeError(f"{method} {path}: {resp.status} {data}")
                return data

        async def puppet(uid: str, name: str) -> None:
            mxid = ids.puppet_mxid(uid)
            await call("POST", f"{C}/register", {"type": "m.login.application_service",
                       "username": mxid[1:].split(":")[0], "inhibit_login": True})  # fmt: skip
            await call("PUT", f"{C}/profile/{mxid}/displayname", {"displayname": name}, mxid)

        async def room(project: Any) -> None:
            desired = desired_room(
                project_spec_of(Project(project_id=project.project_id, name=project.name,
                                        description=project.description, emoji=project.emoji,
                                        color=project.color, members=list(project.members))),
                parsed.users, ids, levels, implicit,
            )  # fmt: skip
            alias = ids.project_alias(project.project_id)
            body = create_room_body(desired, alias[1:].split(":")[0])
            room_id = (await call("POST", f"{C}/createRoom", body))["room_id"]
            await asyncio.gather(
                *(call("POST", f"{C}/rooms/{room_id}/join", {}, m)
                  for m, member in desired.members.items() if member.puppet)
            )  # fmt: skip

        start = time.monotonic()
        await asyncio.gather(*(puppet(u.crm_user_id, u.name) for u in parsed.users.values()))
        await asyncio.gather(*(room(p) for p in parsed.projects.values()))
        return time.monotonic() - start, calls


async def bridge_sync(url: str, token: str, snapshot: dict[str, Any]) -> tuple[float, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        start = time.monotonic()
        async with session.post(f"{url}/api/admin/v1/sync", json=snapshot) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"sync: {resp.status} {body}")
        return time.monotonic() - start, body


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of this process, or of another one from /proc (Linux)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def quiet(last_event: list[float], seconds: float = 3.0, limit: float = 300.0) -> float:
    """Wait until Synapse has delivered the previous run's events to the bridge, so one run
    does not pay for the other's backlog; returns the seconds waited."""
    start = time.monotonic()
    for _ in range(int(limit / 0.5)):  # bounded
        if time.monotonic() - last_event[0] >= seconds:
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - start


async def main() -> None:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--projects", type=int, default=50)
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternate which side runs first, per round"
    )
    parser.add_argument("--profile", help="write a cProfile of the bridge's runs to this file")
    args = parser.parse_args()
    deadline = Deadline(args.time_limit)
    async with bench_stack(sync__concurrency=args.concurrency) as stack:
        app, config = stack.app, stack.config
        hs = app[HOMESERVER]
        token = config["admin_api.token"]
        shape = (args.users, args.projects, args.members)
        last_event = [time.monotonic()]
        synapse_pid = stack.synapse.process.pid if stack.synapse.process else None

        async def seen(_: Any) -> None:
            last_event[0] = time.monotonic()

        app[DISPATCHER].on_timeline(seen)
        rounds: list[dict[str, Any]] = []
        profiler = cProfile.Profile() if args.profile else None
        directory: dict[str, list[Any]] = {"users": [], "projects": []}
        for n in range(args.rounds):
            if deadline.passed():
                break
            run = uuid.uuid4().hex[:6]
            result: dict[str, Any] = {"order": "direct first" if n % 2 == 0 else "bridge first"}

            async def direct(run: str = run, result: dict[str, Any] = result) -> None:
                result["quiesce_s"] = round(await quiet(last_event), 1)
                cpu, hs_cpu = cpu_seconds(), cpu_seconds(synapse_pid)
                seconds, calls = await direct_calls(
                    stack.synapse.url, stack.as_token, app,
                    make_snapshot(f"d{run}", *shape), args.concurrency,
                )  # fmt: skip
                result["direct"] = {
                    "seconds": round(seconds, 2), "calls": calls,
                    "bench_process_cpu_s": round(cpu_seconds() - cpu, 1),
                    "synapse_cpu_s": round(cpu_seconds(synapse_pid) - hs_cpu, 1),
                }  # fmt: skip

            async def bridge(run: str = run, result: dict[str, Any] = result) -> None:
                await quiet(last_event)
                # The CRM's directory grows: earlier rounds stay in the snapshot (unchanged,
                # so they cost planning but no writes), otherwise they would be removed.
                fresh = make_snapshot(f"b{run}", *shape)
                for key in ("users", "projects"):
                    directory[key].extend(fresh[key])
                snapshot = directory
                before = hs.writes
                cpu, hs_cpu = cpu_seconds(), cpu_seconds(synapse_pid)
                if profiler:
                    profiler.enable()
                seconds, initial = await bridge_sync(stack.bridge_url, token, snapshot)
                if profiler:
                    profiler.disable()
                result["bridge_initial"] = {
                    "seconds": round(seconds, 2), "writes": hs.writes - before,
                    "errors": len(initial["errors"]),
                    "bench_process_cpu_s": round(cpu_seconds() - cpu, 1),
                    "synapse_cpu_s": round(cpu_seconds(synapse_pid) - hs_cpu, 1),
                }  # fmt: skip
                before = hs.writes
                seconds, again = await bridge_sync(stack.bridge_url, token, snapshot)
                result["bridge_unchanged_resync"] = {
                    "seconds": round(seconds, 3), "writes": hs.writes - before,
                    "planned": again["writes"]["planned"],
                }  # fmt: skip

            for step in (direct, bridge) if n % 2 == 0 else (bridge, direct):
                await step()
            result["initial_ratio"] = round(
                result["bridge_initial"]["seconds"] / result["direct"]["seconds"], 3
            )
            rounds.append(result)
            print(json.dumps(result), flush=True)
        direct_total = sum(r["direct"]["seconds"] for r in rounds)
        bridge_total = sum(r["bridge_initial"]["seconds"] for r in rounds)
        results = {
            "sizes": {"users": args.users, "projects": args.projects, "members": args.members,
                      "concurrency": args.concurrency},
            "rounds": rounds,
            "initial_ratio_overall": round(bridge_total / direct_total, 3),
            "resync_seconds_max": max(r["bridge_unchanged_resync"]["seconds"] for r in rounds),
            "resync_writes_total": sum(r["bridge_unchanged_resync"]["writes"] for r in rounds),
            "targets": {"initial_ratio_max": 1.1, "resync_seconds_max": 2, "resync_writes": 0},
        }  # fmt: skip
        report("CRM directory sync", results, args.json)
        if profiler:
            profiler.dump_stats(args.profile)


if __name__ == "__main__":
    asyncio.run(main())
