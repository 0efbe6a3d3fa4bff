"""Benchmark: an initial directory sync and an unchanged re-sync, against the same homeserver
calls made directly by a minimal script, in the same run (Synapse on PostgreSQL).

    .venv/bin/python -m bench.directory [--sizes 1000x100,3000x300] [--members 20]

Each size (users x projects, every project with ``--members`` members) gets a fresh Synapse
and bridge database; the order of the two sides alternates from one size to the next.

The direct script does exactly what the bridge must do for a new directory: register each
puppet and set its display name, then per project one createRoom (name, topic, alias, link
state, power levels, invites) and one join per member, with the same concurrency. The
bridge additionally validates the snapshot, plans against its database, checks each new
alias, and records everything it applied.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    Deadline,
    base_parser,
    bench_stack,
    profiled,
    report,
    rss_mb,
    spawn_facade,
    stop_process,
)
from bridge.context import CONFIG, DISPATCHER, FEDERATION, HOMESERVER, IDS
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
                parsed.users, ids, levels, implicit, app[FEDERATION],
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


async def one_size(args: argparse.Namespace, users: int, projects: int, direct_first: bool,
                   with_direct: bool) -> dict[str, Any]:  # fmt: skip
    """A fresh Synapse and bridge database: the direct calls and the bridge's initial sync of
    a new directory (in either order), the unchanged re-sync, then a second bridge process
    that re-syncs the same snapshot from cold and whose RSS is measured."""
    async with bench_stack(sync__concurrency=args.concurrency) as stack:
        app, config = stack.app, stack.config
        hs = app[HOMESERVER]
        token = config["admin_api.token"]
        shape = (users, projects, args.members)
        last_event = [time.monotonic()]
        synapse_pid = stack.synapse.process.pid if stack.synapse.process else None

        async def seen(_: Any) -> None:
            last_event[0] = time.monotonic()

        app[DISPATCHER].on_timeline(seen)
        run = uuid.uuid4().hex[:6]
        snapshot = make_snapshot(f"b{run}", *shape)
        result: dict[str, Any] = {
            "users": users, "projects": projects, "members": args.members,
            "order": "direct first" if direct_first else "bridge first",
        }  # fmt: skip

        async def direct() -> None:
            if not with_direct:
                return
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

        async def bridge() -> None:
            await quiet(last_event)
            before = hs.writes
            cpu, hs_cpu = cpu_seconds(), cpu_seconds(synapse_pid)
            with profiled(f"directory_{users}"):
                seconds, initial = await bridge_sync(stack.bridge_url, token, snapshot)
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

        for step in (direct, bridge) if direct_first else (bridge, direct):
            await step()
        if "direct" in result:
            result["initial_ratio"] = round(
                result["bridge_initial"]["seconds"] / result["direct"]["seconds"], 3
            )
        result["bench_process_rss_mb"] = rss_mb()
        with tempfile.TemporaryDirectory(prefix="bench-dir-") as tmp:
            fresh = await spawn_facade(config, Path(tmp), "fresh")
            proc = fresh.proc
            try:
                idle_rss = rss_mb(proc.pid)
                seconds, again = await bridge_sync(fresh.url, token, snapshot)
                result["fresh_process"] = {
                    "resync_seconds": round(seconds, 3),
                    "writes": again["writes"].get("made"),
                    "rss_mb_before": idle_rss,
                    "rss_mb": rss_mb(proc.pid),
                }
            finally:
                stop_process(proc)
        return result


def _get_seconds(point: dict[str, Any], side: str) -> float:
    return float((point.get(side) or {}).get("seconds") or 0.0)


async def main() -> None:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", default="500x50", help="USERSxPROJECTS,... one fresh stack each, ascending"
    )
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--direct-max-users", type=int, default=1_000_000,
        help="run the direct baseline only up to this many users",
    )  # fmt: skip
    args = parser.parse_args()
    deadline = Deadline(args.time_limit)
    curve: list[dict[str, Any]] = []
    skipped: list[str] = []
    for n, size in enumerate(args.sizes.split(",")):
        users, projects = (int(x) for x in size.lower().split("x"))
        with_direct = users <= args.direct_max_users
        remaining = deadline.end - time.monotonic()
        if curve:
            # Time grows about linearly with the directory: predict this size from the last.
            last = curve[-1]
            scale = users / last["users"]
            bridge_s = last["stack_seconds"] * scale
            direct_s = _get_seconds(last, "direct") * scale
            if with_direct and bridge_s + direct_s > remaining:
                with_direct = False
                both = bridge_s + direct_s
                skipped.append(
                    f"{size}: direct baseline skipped, predicted {both:.0f} s with it, "
                    f"{remaining:.0f} s left"
                )
            if bridge_s > remaining:
                skipped.append(
                    f"{size}: skipped, predicted {bridge_s:.0f} s, {remaining:.0f} s left"
                )
                break
        elif remaining <= 0:
            break
        started = time.monotonic()
        result = await one_size(
            args, users, projects, direct_first=n % 2 == 0, with_direct=with_direct,
        )  # fmt: skip
        result["stack_seconds"] = round(
            time.monotonic() - started - _get_seconds(result, "direct"), 1
        )
        curve.append(result)
        print(json.dumps(result), flush=True)
    measured = [p for p in curve if "direct" in p]
    direct_total = sum(p["direct"]["seconds"] for p in measured)
    bridge_total = sum(p["bridge_initial"]["seconds"] for p in measured)
    results = {
        "members": args.members,
        "concurrency": args.concurrency,
        "curve": curve,
        "skipped": skipped,
        "initial_ratio_overall": round(bridge_total / direct_total, 3) if direct_total else None,
        "targets": {"initial_ratio_max": 1.0, "resync_seconds_max_at_10k": 5, "resync_writes": 0,
                    "rss_mb_max_at_10k": 150},
    }  # fmt: skip
    report("CRM directory sync", results, args.json)


if __name__ == "__main__":
    asyncio.run(main())
