"""The CRM frontend's own socket library, npm socket.io-client, as a recording client."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import eventually

NODE_DIR = Path(__file__).parent / "node"


class NodeRecorder:
    """``tests/node/record.mjs`` in a child process: every event it receives, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self, url: str, token: str) -> NodeRecorder:
        env = {**os.environ, "BRIDGE_URL": url, "TOKEN": token}
        self.proc = await asyncio.create_subprocess_exec(
            "node",
            str(NODE_DIR / "record.mjs"),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())

        async def settled() -> bool:
            return any(e in ("connect", "connect_error") for e, _ in self.events)

        await eventually(settled, timeout=30, interval=0.05)
        assert self.of("connect"), f"the npm client could not connect: {self.events}"
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            line = json.loads(raw)
            self.events.append((line["event"], line.get("data")))

    def of(self, event: str, where: Callable[[Any], bool] | None = None) -> list[Any]:
        return [d for e, d in self.events if e == event and (where is None or where(d))]

    async def wait(
        self, event: str, where: Callable[[Any], bool] | None = None, timeout: float = 30
    ) -> Any:
        async def check() -> Any:
            found = self.of(event, where)
            return found[0] if found else None

        return await eventually(check, timeout=timeout, interval=0.05)

    async def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
