"""``GET /api/chat/conversations`` and ``/unread-count`` for a user in N conversations, on a
facade process, at growing N.

Starts Synapse and the bridge (the process receiving transactions) as ``bench.facade``
does, then for each size of ``--sizes`` adds direct conversations (each with a message from
the partner) until the user is in that many, starts a fresh facade-only process
(``python -m bridge``, ``receive_transactions: false``, metrics on) and measures there,
counting the homeserver calls the facade made (its ``/metrics``):

* ``curve``: per size, the conversation list (first listing of the fresh process, then
  ``--requests`` more) and ``/unread-count``;
* ``without_previews`` (at the largest size): the rows' ``last_preview`` emptied and a fresh
  facade process, so every ``lastMessage`` body is fetched from Synapse: what a facade
  process did before previews existed, on its first listing and after every restart.

    .venv/bin/python -m bench.conversations --sizes 200,1000 --json conversations.json
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
    Facade,
    base_parser,
    bench_stack,
    report,
    rss_mb,
    spawn_facade,
    stop_process,
    summary,
)
from bench.facade import add_conversations, make_user
from bridge.api.auth import VERIFIER
from bridge.context import DATABASE


async def _metrics(session: aiohttp.ClientSession, metrics_url: str) -> int:
    async with session.get(metrics_url) as resp:
        assert resp.status == 200, resp.status
        text = await resp.text()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("bridge_homeserver_requests_total{")
        and 'endpoint="versions"' not in line
    )


async def _timed(session: aiohttp.ClientSession, url: str, headers: dict) -> tuple[float, Any]:
    start = time.perf_counter()
    async with session.get(url, headers=headers) as resp:
        raw = await resp.read()
    # To the last byte, as the other benchmarks time: decoding (1.5 MB of JSON for 1,000
    # conversations) is the client's own work, not the facade's latency.
    elapsed = (time.perf_counter() - start) * 1000
    body = json.loads(raw)
    assert resp.status == 200, body
    return elapsed, body


async def _measure(
    facade: Facade, token: str, requests: int, unread: bool = True
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    url, metrics_url = facade.url, facade.metrics_url
    async with aiohttp.ClientSession() as session:
        calls_before = await _metrics(session, metrics_url)
        times: list[float] = []
        count = 0
        for i in range(requests + 1):
            elapsed, body = await _timed(session, url + "/api/chat/conversations", headers)
            times.append(elapsed)
            count = len(body)
            if i == 0:
                calls_first = await _metrics(session, metrics_url) - calls_before
        calls_after = await _metrics(session, metrics_url) - calls_before
        result: dict[str, Any] = {
            "conversations": count,
            "first_listing_ms": round(times[0], 1),
            "homeserver_calls_first_listing": calls_first,
            "homeserver_calls_all_listings": calls_after,
            "next_listings": summary(times[1:]),
            "samples_ms": [round(t, 2) for t in times[1:]],
        }
        if unread:
            unread_times = []
            for _ in range(requests):
                elapsed, body = await _timed(session, url + "/api/chat/unread-count", headers)
                unread_times.append(elapsed)
            result["unread_count"] = {"value": body, **summary(unread_times)}
    return result


def _save(path: str, results: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(results, indent=2))


async def main(args: argparse.Namespace) -> None:
    overrides = {
        "api__rate_limit__requests": 1_000_000,
        "api__rate_limit__send_requests": 1_000_000,
    }
    sizes = sorted(int(s) for s in args.sizes.split(","))
    deadline = Deadline(args.time_limit)
    async with bench_stack(**overrides) as stack:
        app = stack.app
        user = await make_user(app, "lister")
        token = app[VERIFIER].mint(user.crm_user_id)
        results: dict[str, Any] = {"sizes": sizes, "curve": []}
        have = 0
        with tempfile.TemporaryDirectory(prefix="bench-conv-") as tmp:
            root = Path(tmp)
            for size in sizes:
                if deadline.passed() and size != sizes[-1]:
                    continue  # out of time: straight to the largest size, the one that counts
                started = time.monotonic()
                await add_conversations(app, user, size - have)
                have = size
                setup_s = round(time.monotonic() - started, 1)
                last = size == sizes[-1]
                facade = await spawn_facade(
                    stack.config, root, f"c{size}", profile="conversations" if last else None
                )
                try:
                    point = await _measure(facade, token, args.requests)
                    point["facade_rss_mb"] = rss_mb(facade.proc.pid)
                finally:
                    stop_process(facade.proc)
                results["curve"].append({"size": size, "setup_s": setup_s, **point})
                if args.json:  # what is measured so far, in case a later size runs out of time
                    _save(args.json, results)
                print(f"conversations {size}: p95 {point['next_listings']['p95_ms']} ms",
                      flush=True)  # fmt: skip
            if not deadline.passed():
                await app[DATABASE].execute("UPDATE conversation SET last_preview=NULL")
                facade = await spawn_facade(stack.config, root, "before")
                try:
                    results["without_previews"] = await _measure(
                        facade, token, min(args.requests, 10), unread=False
                    )
                finally:
                    stop_process(facade.proc)
    report("GET /conversations on a facade process", results, args.json)


def entry() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument(
        "--sizes", "--conversations", default="200,500,1000", help="conversation counts, ascending"
    )
    parser.add_argument("--requests", type=int, default=40)
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    entry()
