"""``GET /api/chat/conversations`` for a user in N conversations, on a facade process.

Starts Synapse and the bridge (the process receiving transactions) as ``bench.facade``
does, makes N direct conversations each with a message, then starts a facade-only process
(``python -m bridge``, ``receive_transactions: false``, metrics on) and lists the user's
conversations there, counting the homeserver calls the facade made (its ``/metrics``):

* ``without previews``: the rows' ``last_preview`` emptied and a fresh facade process, so
  every ``lastMessage`` body is fetched from Synapse (one ``/event`` per conversation,
  eight at a time): what a facade process did before previews existed, on its first
  listing and after every restart;
* ``with previews``: another fresh facade process on the rows the previous listing filled.

    .venv/bin/python -m bench.conversations --conversations 1000 --json conversations.json
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import base_parser, bench_stack, report, summary
from bench.facade import listing_setup
from bridge.api.auth import VERIFIER
from bridge.config import Config
from bridge.context import DATABASE
from bridge.devstack.synapse import free_port


async def _metrics(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    return sum(
        int(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("bridge_homeserver_requests_total{")
        and 'endpoint="versions"' not in line
    )


def _spawn(config_path: Path, log_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "-c", str(config_path)],
            stdout=log, stderr=log, env=env,
        )  # fmt: skip


async def _facade(main: Config, root: Path, name: str) -> tuple[subprocess.Popen, str]:
    config = Config(copy.deepcopy(main.data))
    port = free_port()
    config.set("appservice.port", port)
    config.set("appservice.address", f"http://127.0.0.1:{port}")
    config.set("appservice.receive_transactions", False)
    config.set("metrics.enabled", True)
    path = root / f"{name}.yaml"
    config.save(path)
    proc = _spawn(path, root / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(url + "/health/ready") as resp:
                    if resp.status == 200:
                        return proc, url
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"facade {name} did not start")


async def _measure(url: str, token: str, requests: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        calls_before = await _metrics(session, url)
        times: list[float] = []
        count = 0
        for i in range(requests + 1):
            start = time.perf_counter()
            async with session.get(url + "/api/chat/conversations", headers=headers) as resp:
                body = await resp.json()
                assert resp.status == 200, body
            times.append((time.perf_counter() - start) * 1000)
            count = len(body)
            if i == 0:
                calls_first = await _metrics(session, url) - calls_before
        calls_after = await _metrics(session, url) - calls_before
    return {
        "conversations": count,
        "first_listing_ms": round(times[0], 1),
        "homeserver_calls_first_listing": calls_first,
        "homeserver_calls_all_listings": calls_after,
        "next_listings": summary(times[1:]),
    }


async def main(args: argparse.Namespace) -> None:
    overrides = {
        "api__rate_limit__requests": 1_000_000,
        "api__rate_limit__send_requests": 1_000_000,
    }
    async with bench_stack(**overrides) as stack:
        app = stack.app
        started = time.monotonic()
        user = await listing_setup(app, args.conversations)
        setup_s = time.monotonic() - started
        token = app[VERIFIER].mint(user.crm_user_id)
        results: dict[str, Any] = {"setup_seconds": round(setup_s, 1)}
        with tempfile.TemporaryDirectory(prefix="bench-conv-") as tmp:
            root = Path(tmp)
            await app[DATABASE].execute("UPDATE conversation SET last_preview=NULL")
            proc, url = await _facade(stack.config, root, "before")
            try:
                results["without_previews"] = await _measure(url, token, args.requests)
            finally:
                proc.terminate()
                proc.wait(timeout=10)
            proc, url = await _facade(stack.config, root, "after")
            try:
                results["with_previews"] = await _measure(url, token, args.requests)
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    report("GET /conversations on a facade process", results, args.json)


def entry() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=20)
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    entry()
