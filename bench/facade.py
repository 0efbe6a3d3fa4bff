"""The REST facade against Synapse called directly, in the same run, on PostgreSQL.

    .venv/bin/python -m bench.facade [--json out.json]

1. ``POST /api/chat/send`` p50 vs a direct Synapse send as the same puppet (interleaved);
2. throughput with 32 concurrent senders, facade vs direct (alternating rounds);
3. ``GET /api/chat/conversations`` p95 for a user in 200 conversations;
4. ``GET /api/chat/unread-count`` p95 for the same user, with the homeserver requests the
   bridge made meanwhile (must be 0), beside Synapse's cheapest call (whoami) as a floor;
5. ``GET /api/chat/search`` vs Synapse's ``/search`` as the same puppet over the same rooms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import Deadline, base_parser, bench_stack, profiled, report, summary
from bridge.api.auth import VERIFIER
from bridge.api.direct import ensure_puppet
from bridge.context import (
    CONVERSATIONS,
    DATABASE,
    EVENT_INDEX,
    IDS,
    MATRIX,
    PROJECTS,
    ROOM_MEMBERS,
    USERS,
)
from bridge.db.conversation import DIRECT, PROJECT, direct_key
from bridge.db.crm_user import CrmUser
from bridge.db.project import Project
from bridge.matrix.homeserver import q

SENDERS = 32
CONVERSATIONS_FOR_LIST = 200


async def make_user(app: web.Application, tag: str) -> CrmUser:
    crm_user_id = f"{tag}{uuid.uuid4().hex[:8]}"
    user = CrmUser(crm_user_id, app[IDS].puppet_mxid(crm_user_id), f"User {tag}", f"{tag}@x.y")
    await app[USERS].upsert(user)
    await ensure_puppet(app, user)
    return user


async def bounded(limit: int, coros: list) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def run(coro):
        async with gate:
            return await coro

    return await asyncio.gather(*(run(c) for c in coros))


class Clients:
    """The two ways to send: the facade with a JWT, Synapse with the as_token as the puppet.

    Runs in the load process, apart from the bridge, as a real frontend would.
    """

    def __init__(self, plan: dict[str, Any], session: aiohttp.ClientSession) -> None:
        self.plan = plan
        self.session = session
        self.hs = plan["homeserver"]
        self.bridge = plan["bridge"]
        self.as_auth = {"Authorization": f"Bearer {plan['as_token']}"}

    async def direct(self, user: dict[str, str], room_id: str, text: str) -> float:
        url = (
            f"{self.hs}/_matrix/client/v3/rooms/{q(room_id)}/send/m.room.message/"
            f"bench{uuid.uuid4().hex}"
        )
        start = time.perf_counter()
        async with self.session.put(
            url,
            json={"msgtype": "m.text", "body": text},
            params={"user_id": user["mxid"]},
            headers=self.as_auth,
        ) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        return (time.perf_counter() - start) * 1000

    async def facade(self, user: dict[str, str], conversation_id: str, text: str) -> float:
        start = time.perf_counter()
        async with self.session.post(
            f"{self.bridge}/api/chat/send",
            json={"conversationId": conversation_id, "content": text},
            headers={"Authorization": f"Bearer {user['token']}"},
        ) as resp:
            await resp.read()
            assert resp.status == 201, resp.status
        return (time.perf_counter() - start) * 1000

    async def timed_get(self, path: str, user: dict[str, str], **params: str) -> float:
        start = time.perf_counter()
        async with self.session.get(
            f"{self.bridge}{path}",
            params=params,
            headers={"Authorization": f"Bearer {user['token']}"},
        ) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        return (time.perf_counter() - start) * 1000

    async def direct_get(self, path: str, user: dict[str, str]) -> float:
        start = time.perf_counter()
        async with self.session.get(
            f"{self.hs}{path}", params={"user_id": user["mxid"]}, headers=self.as_auth
        ) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        return (time.perf_counter() - start) * 1000

    async def direct_search(self, user: dict[str, str], rooms: list[str], term: str) -> float:
        body = {
            "search_categories": {
                "room_events": {
                    "search_term": term, "keys": ["content.body"], "order_by": "recent",
                    "filter": {"rooms": rooms, "limit": 20},
                }
            }
        }  # fmt: skip
        start = time.perf_counter()
        async with self.session.post(
            f"{self.hs}/_matrix/client/v3/search", json=body,
            params={"user_id": user["mxid"]}, headers=self.as_auth,
        ) as resp:  # fmt: skip
            await resp.read()
            assert resp.status == 200, resp.status
        return (time.perf_counter() - start) * 1000

    async def list_conversations(self, user: dict[str, str]) -> tuple[float, int]:
        start = time.perf_counter()
        async with self.session.get(
            f"{self.bridge}/api/chat/conversations",
            headers={"Authorization": f"Bearer {user['token']}"},
        ) as resp:
            raw = await resp.read()
            assert resp.status == 200, resp.status
        # To the last byte, as every other timing here: decoding is the client's own work.
        elapsed = (time.perf_counter() - start) * 1000
        return elapsed, len(json.loads(raw))


async def project_room(app: web.Application, members: list[CrmUser]) -> tuple[str, str]:
    project_id = f"bench{uuid.uuid4().hex[:8]}"
    room_id = await app[MATRIX].create_room({"preset": "private_chat", "name": project_id})
    await app[ROOM_MEMBERS].set(room_id, app[IDS].bot_mxid, "join")

    async def add(member: CrmUser) -> None:
        await app[MATRIX].invite(room_id, member.mxid)
        await app[MATRIX].join(room_id, as_user=member.mxid)
        await app[ROOM_MEMBERS].set(room_id, member.mxid, "join")

    await bounded(8, [add(m) for m in members])
    await app[PROJECTS].upsert(
        Project(project_id, project_id, room_id=room_id, members=[m.crm_user_id for m in members])
    )
    conversation = await app[CONVERSATIONS].add(room_id, PROJECT, project_id=project_id)
    return room_id, conversation.conversation_id


async def dm(app: web.Application, user: CrmUser, other: CrmUser) -> str:
    room_id = await app[MATRIX].create_room(
        {"preset": "trusted_private_chat", "is_direct": True, "invite": [other.mxid]},
        as_user=user.mxid,
    )
    await app[MATRIX].join(room_id, as_user=other.mxid)
    await app[ROOM_MEMBERS].set(room_id, user.mxid, "join")
    await app[ROOM_MEMBERS].set(room_id, other.mxid, "join")
    await app[CONVERSATIONS].add(
        room_id, DIRECT, key=direct_key(user.crm_user_id, other.crm_user_id)
    )
    event_id = await app[MATRIX].send_event(
        room_id, "m.room.message", {"msgtype": "m.text", "body": "hello"}, as_user=other.mxid
    )
    return event_id


async def sequential(clients: Clients, user: dict, room: list[str], n: int) -> dict:
    room_id, conversation_id = room
    for i in range(5):  # warm up both paths
        await clients.direct(user, room_id, f"warm {i}")
        await clients.facade(user, conversation_id, f"warm {i}")
    direct, facade = [], []
    for i in range(n):
        # Interleaved, so both see the same machine at the same moment.
        if i % 2:
            direct.append(await clients.direct(user, room_id, f"d{i}"))
            facade.append(await clients.facade(user, conversation_id, f"f{i}"))
        else:
            facade.append(await clients.facade(user, conversation_id, f"f{i}"))
            direct.append(await clients.direct(user, room_id, f"d{i}"))
    d, f = summary(direct), summary(facade)
    return {
        "direct": d,
        "facade": f,
        "p50_ratio": round(f["p50_ms"] / d["p50_ms"], 3),
        "samples_ms": {"direct": [round(x, 2) for x in direct],
                       "facade": [round(x, 2) for x in facade]},
    }  # fmt: skip


async def throughput(
    clients: Clients, senders: list[dict], room: list[str], per_sender: int, rounds: int
) -> dict:
    room_id, conversation_id = room

    async def burst(kind: str) -> float:
        async def one(user: dict) -> None:
            for i in range(per_sender):
                if kind == "direct":
                    await clients.direct(user, room_id, f"t{i}")
                else:
                    await clients.facade(user, conversation_id, f"t{i}")

        start = time.perf_counter()
        await asyncio.gather(*(one(u) for u in senders))
        return len(senders) * per_sender / (time.perf_counter() - start)

    direct, facade = [], []
    for i in range(rounds):
        order = ("direct", "facade") if i % 2 == 0 else ("facade", "direct")
        for kind in order:
            (direct if kind == "direct" else facade).append(await burst(kind))
    d, f = sum(direct) / len(direct), sum(facade) / len(facade)
    return {
        "senders": len(senders),
        "messages_per_round": len(senders) * per_sender,
        "direct_msgs_per_s": [round(x, 1) for x in direct],
        "facade_msgs_per_s": [round(x, 1) for x in facade],
        "ratio": round(f / d, 3),
    }


async def listing_setup(app: web.Application, n: int) -> CrmUser:
    """A user in n direct conversations, each with an unread message from the partner."""
    user = await make_user(app, "lister")
    await add_conversations(app, user, n)
    return user


async def add_conversations(app: web.Application, user: CrmUser, n: int) -> None:
    """n more direct conversations for ``user``, each with an unread message, indexed."""
    partners = await bounded(16, [make_user(app, f"p{i}_") for i in range(n)])
    event_ids = await bounded(6, [dm(app, user, p) for p in partners])
    index = app[EVENT_INDEX]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # every message reached the bridge's index
        if len(await index.get_many(event_ids)) == len(event_ids):
            break
        await asyncio.sleep(0.5)


async def listing(clients: Clients, user: dict, requests: int) -> dict:
    for _ in range(5):
        await clients.list_conversations(user)
    times, count = [], 0
    for _ in range(requests):
        elapsed, count = await clients.list_conversations(user)
        times.append(elapsed)
    return {"conversations": count, **summary(times), "samples_ms": [round(t, 2) for t in times]}


async def unread(clients: Clients, user: dict, requests: int) -> dict:
    """/unread-count interleaved with Synapse's whoami (the cheapest authenticated call)."""
    for _ in range(5):
        await clients.timed_get("/api/chat/unread-count", user)
    facade, floor = [], []
    for _ in range(requests):
        facade.append(await clients.timed_get("/api/chat/unread-count", user))
        floor.append(await clients.direct_get("/_matrix/client/v3/account/whoami", user))
    return {"facade": summary(facade), "synapse_whoami": summary(floor)}


async def search(clients: Clients, user: dict, rooms: list[str], requests: int) -> dict:
    """The same search through the facade and straight to Synapse, interleaved."""
    for _ in range(3):
        await clients.timed_get("/api/chat/search", user, q="hello")
        await clients.direct_search(user, rooms, "hello")
    facade, direct = [], []
    for _ in range(requests):
        facade.append(await clients.timed_get("/api/chat/search", user, q="hello"))
        direct.append(await clients.direct_search(user, rooms, "hello"))
    d, f = summary(direct), summary(facade)
    return {"direct": d, "facade": f, "p50_ratio": round(f["p50_ms"] / d["p50_ms"], 3)}


async def load_index_reads(plan: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        clients = Clients(plan, session)
        if plan["phase"] == "unread":
            return {"unread_count": await unread(clients, plan["lister"], plan["list_requests"])}
        return {
            "search": await search(
                clients, plan["lister"], plan["lister_rooms"], plan["search_requests"]
            )
        }


async def load(plan: dict[str, Any]) -> dict[str, Any]:
    """The measurements of one phase (send, list, unread, search), from a process of its own."""
    if plan["phase"] in ("unread", "search"):
        return await load_index_reads(plan)
    deadline = Deadline(plan["time_limit"])
    results: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
        clients = Clients(plan, session)
        senders, room = plan["senders"], plan["room"]
        if plan["phase"] == "send":
            results["send_latency"] = await sequential(
                clients, senders[0], room, plan["sequential"]
            )
            if plan["rounds"] > 0 and not deadline.passed():
                results["throughput"] = await throughput(
                    clients, senders, room, plan["per_sender"], plan["rounds"]
                )
        else:
            results["list_conversations"] = await listing(
                clients, plan["lister"], plan["list_requests"]
            )
    return results


async def main(args: argparse.Namespace) -> None:
    overrides = {
        "api__rate_limit__requests": 1_000_000,
        "api__rate_limit__send_requests": 1_000_000,
    }
    async with bench_stack(**overrides) as stack:
        app = stack.app
        mint = app[VERIFIER].mint

        def who(user: CrmUser) -> dict[str, str]:
            return {"mxid": user.mxid, "token": mint(user.crm_user_id)}

        senders = await bounded(8, [make_user(app, f"s{i}_") for i in range(SENDERS)])
        room = await project_room(app, senders)
        lister = await listing_setup(app, args.list_conversations)
        plan = {
            "homeserver": stack.config["homeserver.address"],
            "bridge": stack.bridge_url,
            "as_token": stack.as_token,
            "senders": [who(u) for u in senders],
            "room": list(room),
            "lister": who(lister),
            "sequential": args.sequential,
            "per_sender": args.per_sender,
            "rounds": args.rounds,
            "list_requests": args.list_requests,
            "time_limit": args.time_limit,
        }
        results: dict[str, Any] = {"synapse": "PostgreSQL", "bridge_db": "PostgreSQL"}
        with profiled("send"):
            results.update(await run_load({**plan, "phase": "send"}, args.time_limit + 60))
        with profiled("conversations_200"):
            results.update(await run_load({**plan, "phase": "list"}, args.time_limit + 60))
        # Index-only reads, each phase in a load process of its own, so the homeserver
        # requests the bridge makes meanwhile can be counted.
        plan["lister_rooms"] = [
            r["room_id"]
            for r in await app[DATABASE].fetch(
                "SELECT room_id FROM room_member WHERE mxid=$1 AND membership='join'",
                lister.mxid,
            )
        ]
        plan["search_requests"] = args.search_requests
        for phase in ("unread", "search"):
            before = app[MATRIX].hs.requests
            measured = await run_load({**plan, "phase": phase}, 300)
            for value in measured.values():
                value["bridge_homeserver_requests"] = app[MATRIX].hs.requests - before
            results.update(measured)
        results["homeserver_rate_limited"] = app[MATRIX].hs.rate_limited
    report("REST facade vs Synapse", results, args.json)


async def run_load(plan: dict[str, Any], timeout: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(plan, file)
        file.flush()
        # The load runs in its own process, like a frontend: the bridge's event loop
        # serves requests instead of also generating them.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.facade", "--load", file.name,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the load process failed ({proc.returncode})")
    return json.loads(out.decode().strip().splitlines()[-1])


def entry() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--sequential", type=int, default=60)
    parser.add_argument("--per-sender", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--list-requests", type=int, default=100)
    parser.add_argument("--list-conversations", type=int, default=CONVERSATIONS_FOR_LIST)
    parser.add_argument("--search-requests", type=int, default=40)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        plan = json.loads(Path(args.load).read_text())
        print(json.dumps(asyncio.run(load(plan))))
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    entry()
