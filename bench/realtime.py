"""Real-time benchmark: end-to-end message latency and fan-out to many sockets.

In one run, on Synapse with PostgreSQL (bench.common.bench_stack):

1. Latency, interleaved so both see the same machine state:
   * bridge: from the start of ``POST /api/chat/send`` to ``new_message`` at another
     user's socket (python-socketio client, websocket);
   * Synapse: from the start of a direct ``PUT /send`` (as the same puppet) to the arrival
     of the appservice transaction carrying it at the bridge (the dispatcher sees it).
   Target: bridge p50 <= 0.8x Synapse p50.
2. Fan-out over ``--facades`` facade processes (``python -m bridge``, not receiving
   transactions) sharing Redis with the bridge that receives them: for each size of
   ``--sockets``, that many sockets (npm socket.io-client, one child process per facade)
   spread over ``--users`` users in one project and over the facades; ``--fanout-messages``
   messages sent over REST to the first facade; p50/p95 delivery latency over every
   (socket, message), and the facades' CPU and RSS while it happens.

    .venv/bin/python -m bench.realtime [--samples 40] [--sockets 500,1000,2000] [--users 100]
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import socketio

from bench.common import (
    Deadline,
    Facade,
    base_parser,
    bench_stack,
    percentile,
    profiled,
    report,
    rss_mb,
    spawn_facade,
    stop_process,
    summary,
)
from bridge.api.auth import JwtVerifier
from bridge.context import DISPATCHER, IDS
from bridge.ids import conversation_id_for_room

NODE_DIR = Path(__file__).resolve().parent.parent / "tests" / "node"


def cpu_seconds_of(pid: int) -> float:
    """CPU time (user + system) of another process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Admin:
    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self.session, self.base = session, base + "/api/admin/v1"
        self.headers = {"Authorization": f"Bearer {token}"}

    async def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.put(self.base + path, json=body, headers=self.headers) as resp:
            data = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"admin API {path}: {resp.status} {data}")
            return data


async def setup_directory(
    session: aiohttp.ClientSession, url: str, admin_token: str, users: int
) -> tuple[list[str], str, str]:
    """A sender, a receiver and `users` fan-out users, all in one project."""
    admin = Admin(session, url, admin_token)
    run = uuid.uuid4().hex[:6]
    ids = [f"b{run}u{i}" for i in range(users + 2)]
    limit = asyncio.Semaphore(8)

    async def put_user(crm_user_id: str) -> None:
        async with limit:
            body = {"name": f"Bench {crm_user_id}", "email": f"{crm_user_id}@example.com"}
            await admin.put(f"/users/{crm_user_id}", {**body, "role": "employee"})

    await asyncio.gather(*(put_user(i) for i in ids))
    project = await admin.put(
        f"/projects/bp{run}", {"name": "Bench project", "members": ids, "createdBy": ids[0]}
    )
    return ids, project["project"]["roomId"], conversation_id_for_room(project["project"]["roomId"])


async def latency(stack, session, sender: str, receiver: str, cid: str, args) -> dict[str, Any]:
    app, url = stack.app, stack.bridge_url
    verifier = JwtVerifier.from_config(stack.config)
    arrived: dict[str, float] = {}

    async def probe(event: dict[str, Any]) -> None:
        body = (event.get("content") or {}).get("body")
        if isinstance(body, str) and body.startswith("direct-"):
            arrived.setdefault(body, time.perf_counter())

    app[DISPATCHER].on_timeline(probe)
    received: dict[str, float] = {}
    client = socketio.AsyncClient(reconnection=False)

    @client.on("new_message")
    async def on_message(message: dict[str, Any]) -> None:
        received.setdefault(message["content"], time.perf_counter())

    await client.connect(
        url, auth={"token": verifier.mint(receiver)}, transports=["websocket"], wait_timeout=20
    )
    sender_mxid = app[IDS].puppet_mxid(sender)
    headers = {"Authorization": f"Bearer {verifier.mint(sender)}"}
    as_headers = {"Authorization": f"Bearer {stack.as_token}"}
    room_id = (await _room_of(session, url, headers, cid))["matrixRoomId"]
    bridge_ms: list[float] = []
    synapse_ms: list[float] = []
    deadline = Deadline(args.time_limit / 2)
    try:
        for i in range(args.warmup + args.samples):
            if deadline.passed():
                break
            # Through the bridge: POST /send -> new_message at the receiver.
            content = f"via-bridge-{i}-{uuid.uuid4().hex[:6]}"
            start = time.perf_counter()
            async with session.post(
                url + "/api/chat/send",
                json={"conversationId": cid, "content": content},
                headers=headers,
            ) as resp:
                assert resp.status == 201, await resp.text()
            await _wait_for(received, content)
            if i >= args.warmup:
                bridge_ms.append((received[content] - start) * 1000)
            # Straight to Synapse, same puppet: PUT /send -> transaction at the bridge.
            body = f"direct-{i}-{uuid.uuid4().hex[:6]}"
            start = time.perf_counter()
            async with session.put(
                f"{stack.synapse.url}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/"
                f"bench{uuid.uuid4().hex}",
                params={"user_id": sender_mxid},
                json={"msgtype": "m.text", "body": body},
                headers=as_headers,
            ) as resp:
                assert resp.status == 200, await resp.text()
            await _wait_for(arrived, body)
            if i >= args.warmup:
                synapse_ms.append((arrived[body] - start) * 1000)
            await asyncio.sleep(args.pause)
    finally:
        app[DISPATCHER].remove(probe)
        await client.disconnect()
    bridge, direct = summary(bridge_ms), summary(synapse_ms)
    return {
        "bridge_send_to_new_message": bridge,
        "synapse_send_to_transaction": direct,
        "p50_ratio": round(bridge["p50_ms"] / direct["p50_ms"], 3),
        "target_p50_ratio": 0.8,
        "samples_ms": {
            "bridge": [round(x, 2) for x in bridge_ms],
            "synapse": [round(x, 2) for x in synapse_ms],
        },
    }


async def _room_of(session, url: str, headers: dict[str, str], cid: str) -> dict[str, Any]:
    async with session.get(url + "/api/chat/conversations", headers=headers) as resp:
        listed = await resp.json()
    return next(c for c in listed if c["_id"] == cid)


async def _wait_for(seen: dict[str, float], key: str, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while key not in seen:
        if time.monotonic() > end:
            raise TimeoutError(f"{key} never arrived")
        await asyncio.sleep(0.001)


async def _node_sockets(url: str, tokens: list[str], root: Path, name: str, expect: int,
                        timeout_s: float) -> asyncio.subprocess.Process:  # fmt: skip
    tokens_file = root / f"{name}.json"
    tokens_file.write_text(json.dumps(tokens))
    return await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / "fanout.mjs"),
        env={
            **os.environ,
            "BRIDGE_URL": url,
            "TOKENS_FILE": str(tokens_file),
            "EXPECT": str(expect),
            "TIMEOUT_MS": str(int(timeout_s * 1000)),
        },
        stdout=asyncio.subprocess.PIPE,
        limit=64 * 1024 * 1024,
    )


async def _ready(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    for _ in range(100_000):  # bounded; each line within 120 s
        line = json.loads(await asyncio.wait_for(proc.stdout.readline(), timeout=120))
        if line["event"] == "ready":
            return
        if line["event"] == "done":
            raise RuntimeError(f"sockets failed to connect: {line.get('connected')}")


async def fanout(
    stack, session, users: list[str], sender: str, cid: str, args, sockets: int, facades: list
) -> dict[str, Any]:
    """``sockets`` sockets spread over the facade processes (one node client each), messages
    sent through the first; delivery latency over every (socket, message)."""
    verifier = JwtVerifier.from_config(stack.config)
    tokens = [verifier.mint(users[i % len(users)]) for i in range(sockets)]
    pids = [f.proc.pid for f in facades]
    timeout_s = min(args.time_limit / 2, 180)
    with tempfile.TemporaryDirectory() as tmp:
        rss_before = [rss_mb(pid) for pid in pids]
        groups = [tokens[i :: len(facades)] for i in range(len(facades))]
        connect_start = time.monotonic()
        procs = [
            await _node_sockets(url, group, Path(tmp), f"f{i}", args.fanout_messages, timeout_s)
            for i, (url, group) in enumerate(zip([f.url for f in facades], groups, strict=True))
        ]
        try:
            await asyncio.gather(*(_ready(p) for p in procs))
            connect_s = time.monotonic() - connect_start
            await asyncio.sleep(args.settle)  # presence and joins of the new sockets settle
            rss_connected = [rss_mb(pid) for pid in pids]
            headers = {"Authorization": f"Bearer {verifier.mint(sender)}"}
            sent_at: dict[str, float] = {}
            cpu_start = [cpu_seconds_of(pid) for pid in pids]
            main_cpu, wall_start = cpu_seconds(), time.monotonic()
            send_url = facades[0].url
            for i in range(args.fanout_messages):
                content = f"fanout-{i}-{uuid.uuid4().hex[:6]}"
                sent_at[content] = time.time() * 1000
                async with session.post(
                    send_url + "/api/chat/send",
                    json={"conversationId": cid, "content": content},
                    headers=headers,
                ) as resp:
                    assert resp.status == 201, await resp.text()
                await asyncio.sleep(args.fanout_interval)
            dones = []
            for proc in procs:
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), timeout=timeout_s + 30)
                dones.append(json.loads(line))
            wall = time.monotonic() - wall_start
            cpu_used = [cpu_seconds_of(pid) - c for pid, c in zip(pids, cpu_start, strict=True)]
            main_used = cpu_seconds() - main_cpu
            rss_peak = [rss_mb(pid) for pid in pids]
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
    delays = [
        arrival - sent_at[content]
        for done in dones
        for content, arrivals in done["arrivals"].items()
        if content in sent_at
        for arrival in arrivals
    ]
    expected = sockets * args.fanout_messages
    return {
        "sockets": sockets,
        "facade_processes": len(facades),
        "users": len(users),
        "messages": args.fanout_messages,
        "deliveries": len(delays),
        "deliveries_expected": expected,
        # Why each node client ended: "complete", or "timeout" (some socket missed some).
        "clients_ended": [done.get("why") for done in dones],
        "connect_all_s": round(connect_s, 2),
        "delivery_p50_ms": round(percentile(delays, 50), 1),
        "delivery_p95_ms": round(percentile(delays, 95), 1),
        "delivery_max_ms": round(max(delays), 1) if delays else None,
        "facade_cpu_percent_while_sending": [round(100 * c / wall, 1) for c in cpu_used],
        "receiving_bridge_cpu_percent_while_sending": round(100 * main_used / wall, 1),
        "facade_rss_mb": {
            "before_sockets": rss_before,
            "connected": rss_connected,
            "after": rss_peak,
        },
    }


def dump_tasks() -> None:
    """SIGUSR1: print where every task waits (for a run that seems stuck)."""
    for task in asyncio.all_tasks():
        task.print_stack(limit=8)


async def main() -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)
    parser = base_parser(__doc__ or "")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.05)
    parser.add_argument(
        "--sockets", default="500,1000,2000", help="fan-out sizes, ascending (comma-separated)"
    )
    parser.add_argument("--facades", type=int, default=2, help="facade processes for fan-out")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--fanout-messages", type=int, default=10)
    parser.add_argument("--fanout-interval", type=float, default=0.25)
    parser.add_argument("--settle", type=float, default=5.0)
    args = parser.parse_args()
    deadline = Deadline(args.time_limit)
    overrides = {
        "api__rate_limit__requests": 1_000_000,
        "api__rate_limit__send_requests": 1_000_000,
        "realtime__presence_refresh": 20,
    }
    async with bench_stack(**overrides) as stack, aiohttp.ClientSession() as session:
        started = time.monotonic()
        ids, _room_id, cid = await setup_directory(
            session, stack.bridge_url, stack.config["admin_api.token"], args.users
        )
        sender, receiver, crowd = ids[0], ids[1], ids[2:]
        setup_s = round(time.monotonic() - started, 1)
        results: dict[str, Any] = {"setup_s": setup_s}
        with profiled("transaction_path"):
            results["latency"] = await latency(stack, session, sender, receiver, cid, args)
        results["fanout"] = []
        with tempfile.TemporaryDirectory(prefix="bench-rt-") as tmp:
            facades: list[Facade] = []
            try:
                for i in range(args.facades):
                    facades.append(await spawn_facade(stack.config, Path(tmp), f"facade{i}"))
                for sockets in (int(n) for n in args.sockets.split(",")):
                    if deadline.passed():
                        break
                    try:
                        point = await fanout(stack, session, crowd, sender, cid, args, sockets,
                                             facades)  # fmt: skip
                    except (TimeoutError, RuntimeError) as e:
                        # Keep the sizes measured so far; the report says where it stopped.
                        results["fanout_failed"] = {"sockets": sockets, "error": repr(e)}
                        break
                    results["fanout"].append(point)
                    print(json.dumps({k: v for k, v in point.items() if "rss" not in k}),
                          flush=True)  # fmt: skip
            finally:
                for facade in facades:
                    stop_process(facade.proc)
    report("realtime", results, args.json)


if __name__ == "__main__":
    asyncio.run(main())
