"""Real-time benchmark: end-to-end message latency and fan-out to many sockets.

In one run, on Synapse with PostgreSQL (bench.common.bench_stack):

1. Latency, interleaved so both see the same machine state:
   * bridge: from the start of ``POST /api/chat/send`` to ``new_message`` at another
     user's socket (python-socketio client, websocket);
   * Synapse: from the start of a direct ``PUT /send`` (as the same puppet) to the arrival
     of the appservice transaction carrying it at the bridge (the dispatcher sees it).
   Target: bridge p50 <= 1.0x Synapse p50.
2. Fan-out: ``--sockets`` sockets (npm socket.io-client, a child process, so the bridge's
   CPU is its own) spread over ``--users`` users in one project; ``--fanout-messages``
   messages sent over REST; p50/p95 delivery latency over every (socket, message), and the
   bridge's CPU and RSS while it happens.

    .venv/bin/python -m bench.realtime [--samples 40] [--sockets 500] [--users 50]
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

from bench.common import Deadline, base_parser, bench_stack, percentile, report, summary
from bridge.api.auth import JwtVerifier
from bridge.context import DISPATCHER, IDS
from bridge.ids import conversation_id_for_room

NODE_DIR = Path(__file__).resolve().parent.parent / "tests" / "node"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


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
        "target_p50_ratio": 1.0,
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


async def fanout(stack, session, users: list[str], sender: str, cid: str, args) -> dict[str, Any]:
    url = stack.bridge_url
    verifier = JwtVerifier.from_config(stack.config)
    tokens = [verifier.mint(users[i % len(users)]) for i in range(args.sockets)]
    with tempfile.TemporaryDirectory() as tmp:
        tokens_file = Path(tmp) / "tokens.json"
        tokens_file.write_text(json.dumps(tokens))
        rss_before = rss_mb()
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(NODE_DIR / "fanout.mjs"),
            env={
                **os.environ,
                "BRIDGE_URL": url,
                "TOKENS_FILE": str(tokens_file),
                "EXPECT": str(args.fanout_messages),
                "TIMEOUT_MS": str(int(args.time_limit * 1000 / 2)),
            },
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
        )
        assert proc.stdout is not None
        connect_start = time.monotonic()
        line = json.loads(await asyncio.wait_for(proc.stdout.readline(), timeout=120))
        while line["event"] != "ready":
            if line["event"] == "done":
                raise RuntimeError(f"sockets failed to connect: {line.get('connected')}")
            line = json.loads(await asyncio.wait_for(proc.stdout.readline(), timeout=120))
        connect_s = time.monotonic() - connect_start
        await asyncio.sleep(args.settle)  # presence and joins of the new sockets settle
        rss_connected = rss_mb()
        headers = {"Authorization": f"Bearer {verifier.mint(sender)}"}
        sent_at: dict[str, float] = {}
        cpu_start, wall_start = cpu_seconds(), time.monotonic()
        for i in range(args.fanout_messages):
            content = f"fanout-{i}-{uuid.uuid4().hex[:6]}"
            sent_at[content] = time.time() * 1000
            async with session.post(
                url + "/api/chat/send",
                json={"conversationId": cid, "content": content},
                headers=headers,
            ) as resp:
                assert resp.status == 201, await resp.text()
            await asyncio.sleep(args.fanout_interval)
        done = json.loads(await asyncio.wait_for(proc.stdout.readline(), timeout=args.time_limit))
        cpu_used, wall = cpu_seconds() - cpu_start, time.monotonic() - wall_start
        rss_peak = rss_mb()
        await proc.wait()
    delays = [
        arrival - sent_at[content]
        for content, arrivals in done["arrivals"].items()
        if content in sent_at
        for arrival in arrivals
    ]
    expected = args.sockets * args.fanout_messages
    return {
        "sockets": args.sockets,
        "users": len(users),
        "messages": args.fanout_messages,
        "deliveries": len(delays),
        "deliveries_expected": expected,
        "connect_all_s": round(connect_s, 2),
        "delivery_p50_ms": round(percentile(delays, 50), 1),
        "delivery_p95_ms": round(percentile(delays, 95), 1),
        "delivery_max_ms": round(max(delays), 1) if delays else None,
        "bridge_cpu_percent_while_sending": round(100 * cpu_used / wall, 1),
        "bridge_rss_mb": {
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
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--fanout-messages", type=int, default=20)
    parser.add_argument("--fanout-interval", type=float, default=0.25)
    parser.add_argument("--settle", type=float, default=5.0)
    args = parser.parse_args()
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
        results["latency"] = await latency(stack, session, sender, receiver, cid, args)
        results["fanout"] = await fanout(stack, session, crowd, sender, cid, args)
    report("realtime", results, args.json)


if __name__ == "__main__":
    asyncio.run(main())
