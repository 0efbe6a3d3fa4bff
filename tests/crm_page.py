"""The CRM messenger's socket (tests/node/crm_messenger.mjs), driven from Python."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).parent / "node"


class CrmPage:
    def __init__(self, url: str, token: str) -> None:
        self.env = {**os.environ, "BRIDGE_URL": url, "TOKEN": token}
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self) -> CrmPage:
        self.proc = await asyncio.create_subprocess_exec(
            "node", str(NODE_DIR / "crm_messenger.mjs"), env=self.env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        await self.wait_any(("connected", "connect_error"))
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            self.lines.append(json.loads(raw))
            self._changed.set()

    async def wait_any(self, events: tuple[str, ...], timeout: float = 30) -> dict[str, Any]:
        return await self.wait(lambda line: line["event"] in events, timeout)

    async def wait(
        self, test: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> dict[str, Any]:
        async def found() -> dict[str, Any]:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    assert line["event"] != "failed", self.lines
                    if test(line):
                        return line
                seen = len(self.lines)
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(found(), timeout)
        except TimeoutError:
            raise AssertionError(f"not seen; the page saw: {self.lines[-20:]}") from None

    async def event(
        self, name: str, test: Callable[[Any], bool] = lambda _: True, timeout: float = 30
    ) -> Any:
        line = await self.wait(lambda line: line["event"] == name and test(line["data"]), timeout)
        return line["data"]

    def of(self, name: str) -> list[Any]:
        return [line["data"] for line in self.lines if line["event"] == name]

    async def call(self, emit: str, data: Any) -> Any:
        assert self.proc is not None and self.proc.stdin is not None
        call_id = next(self._ids)
        self.proc.stdin.write(
            (json.dumps({"id": call_id, "emit": emit, "data": data}) + "\n").encode()
        )
        await self.proc.stdin.drain()
        line = await self.wait(lambda line: line["event"] == "ack" and line["id"] == call_id)
        return line["data"]

    async def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
