"""Helpers for the real-time tests: a recording Socket.IO client and a syncing Matrix user."""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from nio import AsyncClient, ReceiptEvent, TypingNoticeEvent

from bridge.config import Config
from bridge.devstack.synapse import free_port
from bridge.ids import conversation_id_for_room
from tests.conftest import unique
from tests.helpers import eventually


class Recorder:
    """A python-socketio client that keeps every event it receives, in order."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.client = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []

        @self.client.on("*")
        async def record(event: str, *args: Any) -> None:
            self.events.append((event, args[0] if len(args) == 1 else list(args)))

    async def connect(
        self, url: str, token: str | None, transports: list[str] | None = None, query: bool = False
    ) -> Recorder:
        target = f"{url}?token={token}" if query and token else url
        await self.client.connect(
            target,
            auth=None if query else {"token": token},
            transports=transports or ["websocket"],
            wait_timeout=15,
        )
        return self

    async def close(self) -> None:
        if self.client.connected:
            await self.client.disconnect()

    def of(
        self, event: str, where: Callable[[Any], bool] | None = None, since: int = 0
    ) -> list[Any]:
        """What arrived of ``event`` (matching ``where``) from the ``since``-th event on."""
        return [d for e, d in self.events[since:] if e == event and (where is None or where(d))]

    async def wait(
        self,
        event: str,
        where: Callable[[Any], bool] | None = None,
        timeout: float = 30,
        since: int = 0,
    ) -> Any:
        """The first ``event`` matching ``where``; ``since=len(recorder.events)`` taken
        before an action waits for what the action caused, not an earlier lookalike."""

        async def check() -> Any:
            found = self.of(event, where, since)
            return found[0] if found else None

        return await eventually(check, timeout=timeout, interval=0.05)

    async def emit(self, event: str, data: Any) -> None:
        await self.client.emit(event, data)

    async def call(self, event: str, data: Any, timeout: float = 15) -> Any:
        return await self.client.call(event, data, timeout=timeout)


class MatrixWatcher:
    """Syncs a matrix-nio client in the background and keeps what Element would show."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.messages: list[dict[str, Any]] = []
        self.typing: dict[str, list[str]] = defaultdict(list)
        self.receipts: list[tuple[str, str, str]] = []
        self._task: asyncio.Task[None] | None = None
        self.errors: list[object] = []

    async def start(self) -> MatrixWatcher:
        # Syncing would show the user online; tests set presence explicitly instead.
        await self.client.sync(timeout=0, full_state=True, set_presence="offline")
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            try:
                await self._sync_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep syncing, like a real client would
                self.errors.append(e)
                await asyncio.sleep(0.2)

    async def _sync_once(self) -> None:
        if True:
            resp = await self.client.sync(timeout=1000, set_presence="offline")
            rooms = getattr(resp, "rooms", None)
            if rooms is None:
                self.errors.append(resp)
                await asyncio.sleep(0.2)
                return
            for room_id, info in rooms.join.items():
                for event in info.timeline.events:
                    source = getattr(event, "source", {})
                    if source.get("type") == "m.room.message":
                        self.messages.append({**source, "room_id": room_id})
                for event in info.ephemeral:
                    if isinstance(event, TypingNoticeEvent):
                        self.typing[room_id] = list(event.users)
                    elif isinstance(event, ReceiptEvent):
                        for receipt in event.receipts:
                            self.receipts.append((room_id, receipt.user_id, receipt.event_id))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def bodies(self, room_id: str) -> list[str]:
        return [m["content"].get("body") for m in self.messages if m["room_id"] == room_id]


async def settle(seconds: float = 1.0) -> None:
    """Let stray events arrive before asserting that something did NOT happen."""
    await asyncio.sleep(seconds)


class Directory:
    """The CRM backend: users and projects pushed through the admin API."""

    def __init__(self, base_url: str, admin_token: str) -> None:
        self.base = base_url + "/api/admin/v1"
        self.headers = {"Authorization": f"Bearer {admin_token}"}

    async def _put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.put(self.base + path, json=body, headers=self.headers) as resp,
        ):
            data = await resp.json()
            assert resp.status == 200, data
            return data

    async def archive(self, project_id: str) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.delete(f"{self.base}/projects/{project_id}", headers=self.headers) as resp,
        ):
            data = await resp.json()
            assert resp.status == 200, data
            return data

    async def user(self, name: str, matrix_id: str | None = None) -> str:
        crm_user_id = unique("u")
        body: dict[str, Any] = {"name": name, "email": f"{crm_user_id}@example.com"}
        body["role"] = "employee"
        if matrix_id:
            body["matrixId"] = matrix_id
        await self._put(f"/users/{crm_user_id}", body)
        return crm_user_id

    async def project(
        self, project_id: str, name: str, members: list[str], created_by: str
    ) -> dict[str, Any]:
        body = {"name": name, "members": members, "createdBy": created_by, "emoji": "🚀"}
        return (await self._put(f"/projects/{project_id}", body))["project"]


def conversation_of(project: dict[str, Any]) -> str:
    return conversation_id_for_room(project["roomId"])


class BridgeProcess:
    """``python -m bridge -c <config>`` as a child process: a real second (or killable) bridge."""

    def __init__(self, config: Config, directory: Path, name: str) -> None:
        self.config = config
        self.path = directory / f"{name}.yaml"
        self.log_path = directory / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # Extra environment for the next start (e.g. BRIDGE_FAILPOINTS; bridge/failpoints.py).
        self.env: dict[str, str] = {}
        config.save(self.path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config['appservice.port']}"

    def spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", "-c", str(self.path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    **{k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")},
                    **self.env,
                },
            )

    async def start(self, timeout: float = 30) -> BridgeProcess:
        self.spawn()

        async def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(self.url + "/health/ready") as resp,
                ):
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout=timeout, interval=0.2)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no goodbye, like a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def facade_config(main: Config) -> Config:
    """A facade-only process beside ``main``: same database, Redis and secrets, its own port."""
    config = Config(copy.deepcopy(main.data))
    port = free_port()
    config.set("appservice.port", port)
    config.set("appservice.address", f"http://127.0.0.1:{port}")
    config.set("appservice.receive_transactions", False)
    config.set("logging.loggers.bridge.level", "WARNING")
    return config
