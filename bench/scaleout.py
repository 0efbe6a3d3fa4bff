"""Scale-out: the bridge against a monolithic Synapse and against Synapse with workers.

    .venv/bin/python -m bench.scaleout [--modes monolith,workers] [--per-sender 6] [--rounds 3]

For each homeserver mode, in one run, on PostgreSQL (bench.common.bench_stack; the worker
mode is bridge/devstack/workers.py: main, event persister, appservice sender, generic
worker, a router), with the in-process bridge receiving transactions and two facade
processes (``python -m bridge``, not receiving):

1. Throughput with 32 concurrent senders (each a CRM user's puppet in one project room),
   rounds rotating which side goes first: Synapse called directly (``PUT /send`` as the
   puppet, through the router in worker mode), ``POST /api/chat/send`` through one facade
   process, and through two (the senders split between them). The CPU time of every
   process (each Synapse process, the router, the facades, the receiving bridge) is read
   from /proc/<pid>/stat before and after each burst: CPU ms per message, per process.
2. Send → ``new_message`` latency beside send → appservice transaction (bench.realtime's
   interleaved measurement), on each mode.

The failover time (the receiver killed during a burst, a standby taking over) is
bench/failover.py's.

The load runs in a child process, as a frontend would, so the bridge's event loop serves
requests instead of also generating them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    Deadline,
    Facade,
    base_parser,
    bench_stack,
    report,
    spawn_facade,
    stop_process,
)
from bench.facade import SENDERS, bounded, make_user, project_room
from bench.realtime import cpu_seconds_of, latency, setup_directory
from bridge.api.auth import VERIFIER
from bridge.matrix.homeserver import q

KINDS = ("direct", "facade_1", "facade_2")


async def load(plan: dict[str, Any]) -> dict[str, Any]:
    """The throughput rounds, from a process of its own; CPU per process per burst."""
    room_id, conversation_id = plan["room"]
    senders: list[dict[str, str]] = plan["senders"]
    facades: list[str] = plan["facades"]
    pids: dict[str, int] = {k: int(v) for k, v in plan["pids"].items()}
    as_auth = {"Authorization": f"Bearer {plan['as_token']}"}
    deadline = Deadline(plan["time_limit"])

    async def send(session: aiohttp.ClientSession, kind: str, n: int, user: dict, i: int):
        if kind == "direct":
            url = (f"{plan['homeserver']}/_matrix/client/v3/rooms/{q(room_id)}/send/"
                   f"m.room.message/so{uuid.uuid4().hex}")  # fmt: skip
            async with session.put(
                url, json={"msgtype": "m.text", "body": f"d{i}"},
                params={"user_id": user["mxid"]}, headers=as_auth,
            ) as resp:  # fmt: skip
                await resp.read()
                assert resp.status == 200, resp.status
            return
        # facade_1: every sender on the first facade; facade_2: split between two.
        base = facades[0] if kind == "facade_1" else facades[n % 2]
        async with session.post(
            f"{base}/api/chat/send",
            json={"conversationId": conversation_id, "content": f"f{i}"},
            headers={"Authorization": f"Bearer {user['token']}"},
        ) as resp:
            await resp.read()
            assert resp.status == 201, resp.status

    async def burst(session: aiohttp.ClientSession, kind: str) -> dict[str, Any]:
        async def one(n: int, user: dict) -> None:
            for i in range(plan["per_sender"]):
                await send(session, kind, n, user, i)

        messages = len(senders) * plan["per_sender"]
        cpu_before = {name: cpu_seconds_of(pid) for name, pid in pids.items()}
        start = time.perf_counter()
        await asyncio.gather(*(one(n, u) for n, u in enumerate(senders)))
        wall = time.perf_counter() - start
        cpu = {name: cpu_seconds_of(pid) - cpu_before[name] for name, pid in pids.items()}
        return {
            "msgs_per_s": round(messages / wall, 1),
            "cpu_ms_per_message": {k: round(1000 * v / messages, 2) for k, v in cpu.items()},
            "cpu_share_of_wall": {k: round(v / wall, 3) for k, v in cpu.items()},
        }

    out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
        for _ in range(2):  # warm up every path: first sends open pools and caches
            for kind in KINDS:
                await asyncio.gather(*(send(session, kind, n, u, 0) for n, u in
                                       enumerate(senders[:8])))  # fmt: skip
        for r in range(plan["rounds"]):
            if deadline.passed():
                break
            order = KINDS[r % 3 :] + KINDS[: r % 3]
            for kind in order:
                out[kind].append(await burst(session, kind))
    return out


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def _throughput_summary(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Means over rounds; ratios of each facade setup to the direct calls."""
    means = {kind: _mean([b["msgs_per_s"] for b in rounds[kind]]) for kind in KINDS}
    cpu: dict[str, dict[str, float | None]] = {}
    for kind in KINDS:
        names = {n for b in rounds[kind] for n in b["cpu_ms_per_message"]}
        cpu[kind] = {n: _mean([b["cpu_ms_per_message"][n] for b in rounds[kind]]) for n in names}
    direct = means["direct"] or float("nan")
    return {
        "senders": SENDERS,
        "msgs_per_s": means,
        "rounds_msgs_per_s": {k: [b["msgs_per_s"] for b in rounds[k]] for k in KINDS},
        "ratio_facade_1": round((means["facade_1"] or 0) / direct, 3),
        "ratio_facade_2": round((means["facade_2"] or 0) / direct, 3),
        "cpu_ms_per_message": cpu,
    }


async def measure_mode(mode: str, args: argparse.Namespace, deadline: Deadline) -> dict[str, Any]:
    overrides = {
        "api__rate_limit__requests": 1_000_000,
        "api__rate_limit__send_requests": 1_000_000,
    }
    started = time.monotonic()
    async with bench_stack(synapse_workers=mode == "workers", **overrides) as stack:
        app = stack.app
        mint = app[VERIFIER].mint
        senders = await bounded(8, [make_user(app, f"s{i}_") for i in range(SENDERS)])
        room = await project_room(app, senders)
        results: dict[str, Any] = {
            "mode": mode,
            "synapse_processes": sorted(stack.synapse.pids()),
            "setup_s": round(time.monotonic() - started, 1),
        }
        with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
            facades: list[Facade] = []
            try:
                for i in range(2):
                    facades.append(await spawn_facade(stack.config, Path(tmp), f"facade{i}"))
                pids = {**stack.synapse.pids(), "bridge_receiving": os.getpid()}
                pids.update({f"facade{i}": f.proc.pid for i, f in enumerate(facades)})
                plan = {
                    "homeserver": stack.synapse.url,
                    "as_token": stack.as_token,
                    "facades": [f.url for f in facades],
                    "senders": [{"mxid": u.mxid, "token": mint(u.crm_user_id)} for u in senders],
                    "room": list(room),
                    "per_sender": args.per_sender,
                    "rounds": args.rounds,
                    "pids": pids,
                    "time_limit": max(30.0, args.time_limit / 4),
                }
                rounds = await run_load(plan, args.time_limit)
                results["throughput"] = _throughput_summary(rounds)
            finally:
                for facade in facades:
                    stop_process(facade.proc)
        if not deadline.passed():
            async with aiohttp.ClientSession() as session:
                ids, _room_id, cid = await setup_directory(
                    session, stack.bridge_url, stack.config["admin_api.token"], 0
                )
                results["latency"] = await latency(stack, session, ids[0], ids[1], cid, args)
    print(json.dumps({"mode": mode, "throughput": results.get("throughput", {}).get(
        "msgs_per_s")}), flush=True)  # fmt: skip
    return results


async def run_load(plan: dict[str, Any], timeout: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(plan, file)
        file.flush()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.scaleout", "--load", file.name,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"the load process failed ({proc.returncode})")
    return json.loads(out.decode().strip().splitlines()[-1])


async def main(args: argparse.Namespace) -> None:
    deadline = Deadline(args.time_limit)
    results: dict[str, Any] = {"modes": {}}
    for mode in args.modes.split(","):
        if deadline.passed():
            results.setdefault("skipped", []).append(mode)
            continue
        results["modes"][mode] = await measure_mode(mode, args, deadline)
    report("scale-out", results, args.json)


def entry() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--modes", default="monolith,workers")
    parser.add_argument("--per-sender", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    # bench.realtime.latency's knobs
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.05)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        plan = json.loads(Path(args.load).read_text())
        print(json.dumps(asyncio.run(load(plan))))
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    entry()
