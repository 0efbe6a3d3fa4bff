"""Several receiving processes behind one URL, as deploy/nginx.conf puts them.

``ReceiverRouter`` is the tests' stand-in for nginx's ``upstream receivers`` block, an
aiohttp reverse proxy doing what ``proxy_next_upstream error timeout http_503
non_idempotent`` does there: each request goes to the next process in turn, and on a
connection error or a 503 to the one after, until one answers otherwise or all were
tried. It records every answer, so a test sees which process acknowledged which
transaction. The registration's ``url`` points at it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from bridge.config import Config
from bridge.crm.engine_lock import deployment_of
from bridge.devstack.synapse import free_port
from bridge.matrix.receiver import receiver_key

_HOP_BY_HOP = {"host", "connection", "content-length", "transfer-encoding", "keep-alive"}


@dataclass(frozen=True)
class Answer:
    at: float  # time.monotonic()
    upstream: str
    method: str
    path: str
    status: int  # 0: no answer (connection refused or reset)

    @property
    def txn_id(self) -> str | None:
        prefix = "/_matrix/app/v1/transactions/"
        return self.path.removeprefix(prefix) if self.path.startswith(prefix) else None


class ReceiverRouter:
    def __init__(self) -> None:
        self.port = free_port()
        self.upstreams: list[str] = []
        self.answers: list[Answer] = []
        self._turn = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ReceiverRouter:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        first = self._turn % max(len(self.upstreams), 1)
        self._turn += 1
        order = self.upstreams[first:] + self.upstreams[:first]
        last: tuple[int, bytes, str] | None = None
        for upstream in order:
            try:
                async with self._session.request(
                    request.method, upstream + request.path_qs, data=body, headers=headers
                ) as resp:
                    payload = await resp.read()
                    status, kind = resp.status, resp.content_type
            except (TimeoutError, aiohttp.ClientError):
                self._record(upstream, request, 0)
                continue
            self._record(upstream, request, status)
            last = (status, payload, kind)
            if status != 503:
                break
        if last is None:
            return web.json_response(
                {"errcode": "M_UNKNOWN", "error": "no receiver answered"}, status=502
            )
        status, payload, kind = last
        return web.Response(status=status, body=payload, content_type=kind)

    def _record(self, upstream: str, request: web.Request, status: int) -> None:
        answer = Answer(time.monotonic(), upstream, request.method, request.path, status)
        self.answers.append(answer)

    def acknowledged(self) -> dict[str, list[str]]:
        """Transaction id -> the processes that answered it 200, in order."""
        acks: dict[str, list[str]] = {}
        for answer in self.answers:
            if answer.txn_id is not None and answer.method == "PUT" and answer.status == 200:
                acks.setdefault(answer.txn_id, []).append(answer.upstream)
        return acks


def receiver_config(main: Config) -> Config:
    """Another process configured to receive transactions beside ``main``: same database,
    Redis and secrets, its own port."""
    config = Config(copy.deepcopy(main.data))
    config.set("appservice.port", free_port())
    config.set("appservice.receive_transactions", True)
    return config


async def role_of(url: str) -> str | None:
    try:
        async with aiohttp.ClientSession() as session, session.get(url + "/health/ready") as resp:
            return (await resp.json()).get("role")
    except aiohttp.ClientError:
        return None


def lock_of(config: Config) -> tuple[int, int]:
    """The receiver lock as ``pg_locks`` shows it: (classid, objid) of the bigint key."""
    key = receiver_key(deployment_of(config)) & 0xFFFFFFFFFFFFFFFF
    return key >> 32, key & 0xFFFFFFFF


async def lock_holder_pid(conn: Any, config: Config) -> int | None:
    """The PostgreSQL backend holding the receiver lock, if any."""
    classid, objid = lock_of(config)
    return await conn.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype='advisory' AND granted AND objsubid=1 "
        "AND classid::bigint=$1 AND objid::bigint=$2",
        classid,
        objid,
    )
