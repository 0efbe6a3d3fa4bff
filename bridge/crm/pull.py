"""Optional pull mode: poll a CRM URL that serves the same snapshot as ``POST /sync``.

Never forced: a CRM export that comes back empty or partial cannot remove anybody.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from ..context import CONFIG, HOMESERVER, IDS, RECEIVER
from . import operations
from .admin_api import bridge_accounts, roles
from .snapshot import parse_snapshot

log = logging.getLogger("bridge.crm.pull")


async def pull_once(app: web.Application, url: str, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with app[HOMESERVER].session.get(
        url, headers=headers, timeout=aiohttp.ClientTimeout(total=60)
    ) as resp:
        resp.raise_for_status()
        body = await resp.json(content_type=None)
    snapshot = parse_snapshot(body, roles(app), bridge_accounts(app), app[IDS].domain)
    return await operations.sync(app, snapshot)


async def _loop(app: web.Application) -> None:
    config = app[CONFIG]
    url, token = config["sync.pull_url"], config.get("sync.pull_token")
    interval = max(float(config.get("sync.pull_interval", 300)), 5.0)
    while True:
        try:
            result = await pull_once(app, url, token)
            log.info("Pulled the CRM directory: %d write(s)", result["writes"]["made"])
        except Exception as e:  # a failing CRM must not stop the bridge; try again later
            # aiohttp's errors quote the full URL, which may carry a key: log only the kind.
            status = getattr(e, "status", None)
            log.warning(
                "Pulling the CRM directory from %s failed: %s%s",
                _safe_url(url), type(e).__name__, f" (HTTP {status})" if status else "",
            )  # fmt: skip
        await asyncio.sleep(interval)


def _safe_url(url: str) -> str:
    parsed = URL(url)
    return str(parsed.with_user(None).with_query(None).with_fragment(None))


def setup(app: web.Application) -> None:
    # One poller per deployment: the process holding the receiver lock (matrix/receiver.py),
    # so it moves with the lock when that process dies.
    if app[CONFIG].get("sync.pull_url"):
        app[RECEIVER].duty("pull", lambda: _loop(app))
