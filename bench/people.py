"""People (issue 19): ``GET /api/chat/employees`` with a large directory, and
``GET /api/chat/conversations`` with the wider user objects (name parts, picture, position,
and participants' presence), on a facade process.

Starts Synapse and the bridge as ``bench.facade`` does, writes ``--users`` CRM users into the
directory (in the database: the picker reads the index, not Matrix), gives the lister
``--conversations`` DMs, starts a fresh facade-only process and measures there, each call
interleaved with Synapse's ``whoami`` as the lister's puppet (the cheapest authenticated
homeserver call: the yardstick of the same run):

* ``employees``: the picker as the CRM page opens it (no ``q``, the default limit), and a
  search (``q``) that matches a handful;
* ``unread_count``: ``GET /unread-count``, the facade's fixed cost (auth, rate limit, one
  indexed query), to tell the picker's own cost from the machine's load;
* ``conversations``: the list, every participant with firstName/lastName/profileImage/
  position/isOnline/lastSeen.

    .venv/bin/python -m bench.people --users 10000 --conversations 200 --json people.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    Deadline,
    base_parser,
    bench_stack,
    report,
    spawn_facade,
    stop_process,
    summary,
)
from bench.facade import add_conversations, bounded, make_user
from bridge.api.auth import VERIFIER
from bridge.context import IDS, USERS
from bridge.db.crm_user import CrmUser

_FIRST = ("Ann", "Bob", "Chen", "Dana", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo")
_POSITIONS = ("Designer", "Engineer", "Sales", "Support", "Manager")


async def _directory(app: Any, users: int, company: str) -> None:
    def person(i: int) -> CrmUser:
        crm_user_id = f"emp{i:06d}"
        first, last = _FIRST[i % len(_FIRST)], f"Surname{i}"
        return CrmUser(
            crm_user_id, app[IDS].puppet_mxid(crm_user_id), f"{first} {last}",
            f"{crm_user_id}@example.com", first_name=first, last_name=last,
            position=_POSITIONS[i % len(_POSITIONS)], company_id=company,
            profile_image=f"https://crm.example/pics/{crm_user_id}.png",
        )  # fmt: skip

    await bounded(16, [app[USERS].upsert(person(i)) for i in range(users)])


async def _timed(session: aiohttp.ClientSession, url: str, headers: dict) -> tuple[float, Any]:
    start = time.perf_counter()
    async with session.get(url, headers=headers) as resp:
        raw = await resp.read()
    elapsed = (time.perf_counter() - start) * 1000
    assert resp.status == 200, raw[:300]
    return elapsed, json.loads(raw)


async def _measure(
    session: aiohttp.ClientSession, url: str, headers: dict, direct: tuple[str, dict], n: int
) -> dict[str, Any]:
    """``n`` calls of the facade interleaved with ``n`` of the yardstick (after 3 warm-ups)."""
    ours, theirs, size = [], [], 0
    for i in range(n + 3):
        elapsed, body = await _timed(session, url, headers)
        base, _ = await _timed(session, *direct)
        if i >= 3:
            ours.append(elapsed)
            theirs.append(base)
        size = len(body) if isinstance(body, list) else 0
    mine, yard = summary(ours), summary(theirs)
    return {
        "items": size,
        "facade": mine,
        "whoami": yard,
        "p95_ratio": round(mine["p95_ms"] / yard["p95_ms"], 2) if yard["p95_ms"] else None,
    }


async def main(args: argparse.Namespace) -> None:
    overrides = {
        "api__rate_limit__requests": 1_000_000,
        "api__rate_limit__send_requests": 1_000_000,
    }
    deadline = Deadline(args.time_limit)
    async with bench_stack(**overrides) as stack:
        app = stack.app
        company = "acme"
        started = time.monotonic()
        await _directory(app, args.users, company)
        lister = await make_user(app, "lister")
        lister.company_id = company
        await app[USERS].upsert(lister)
        await add_conversations(app, lister, args.conversations)
        setup_s = round(time.monotonic() - started, 1)
        token = app[VERIFIER].mint(lister.crm_user_id)
        headers = {"Authorization": f"Bearer {token}"}
        whoami = (
            f"{stack.config['homeserver.address']}/_matrix/client/v3/account/whoami"
            f"?user_id={lister.mxid}",
            {"Authorization": f"Bearer {stack.as_token}"},
        )
        results: dict[str, Any] = {
            "users": args.users, "conversation_count": args.conversations, "setup_s": setup_s,
        }  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="bench-people-") as tmp:
            facade = await spawn_facade(stack.config, Path(tmp), "people")
            try:
                async with aiohttp.ClientSession() as session:
                    base = facade.url + "/api/chat"
                    # The facade's fixed cost (auth, rate limit, one indexed query), for scale.
                    results["unread_count"] = await _measure(
                        session, base + "/unread-count", headers, whoami, args.requests
                    )
                    results["employees"] = await _measure(
                        session, base + "/employees", headers, whoami, args.requests
                    )
                    if not deadline.passed():
                        results["employees_search"] = await _measure(
                            session, base + "/employees?q=surname777", headers, whoami,
                            args.requests,
                        )  # fmt: skip
                    if not deadline.passed():
                        results["conversations"] = await _measure(
                            session, base + "/conversations", headers, whoami, args.requests
                        )
            finally:
                stop_process(facade.proc)
    for key in ("unread_count", "employees", "employees_search", "conversations"):
        if key in results:
            print(f"{key}: p95 {results[key]['facade']['p95_ms']} ms", flush=True)
    report("People: /employees and /conversations on a facade process", results, args.json)


def entry() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--requests", type=int, default=40)
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    entry()
