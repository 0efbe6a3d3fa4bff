"""Watches whether the homeserver answers at all, for readiness and for failing fast.

Every ``interval`` seconds it asks for ``/_matrix/client/versions``. The homeserver counts as
down once it has answered nothing (these probes or any other request) for its
``silence_timeout``, and as up again with its next answer. While it is down, readiness is
503 and requests made for CRM users answer 503 at once instead of each waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from .homeserver import Homeserver

log = logging.getLogger("bridge.matrix.monitor")


class HomeserverMonitor:
    def __init__(
        self, hs: Homeserver, on_change: Callable[[bool], None], *, interval: float = 0.5
    ) -> None:
        self.hs = hs
        self.on_change = on_change
        self.interval = interval

    async def run(self) -> None:
        # Its own connection: probes must not queue behind a full pool of slow requests.
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1),
            timeout=aiohttp.ClientTimeout(total=self.hs.silence_timeout),
        ) as session:
            while True:
                started = time.monotonic()
                await self._probe(session)
                self._update()
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def _probe(self, session: aiohttp.ClientSession) -> None:
        try:
            # No token: Synapse checks one it is given, even here.
            async with session.get(self.hs.base_url + "/_matrix/client/versions") as resp:
                await resp.read()
                if resp.status < 500:
                    self.hs.heard()
        except (TimeoutError, aiohttp.ClientError):
            pass

    def _update(self) -> None:
        silent = self.hs.silent_for()
        up = silent < self.hs.silence_timeout
        if up == self.hs.available:
            return
        self.hs.available = up
        if up:
            log.warning("The homeserver answers again")
        else:
            log.warning("The homeserver has not answered for %.1fs; counting it down", silent)
        self.on_change(up)
