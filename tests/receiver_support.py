"""Several receiving processes behind one URL, as deploy/nginx.conf puts them.

Two proxies, either of which the registration's ``url`` points at:

* ``NginxReceivers``: nginx itself, running the homeserver's door of deploy/nginx.conf
  (its ``upstream receivers`` and ``listen 29340`` server, the upstream names swapped for
  the test processes' ports). Its access log says which process answered each request.
* ``ReceiverRouter``: an aiohttp reverse proxy doing what ``proxy_next_upstream error
  timeout http_503 non_idempotent`` does there (each request to the next process in turn,
  on a connection error or a 503 to the one after), for machines without nginx.

Both record every answer, so a test sees which process acknowledged which transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bridge.config import Config
from bridge.crm.engine_lock import deployment_of
from bridge.devstack.synapse import free_port
from bridge.matrix.receiver import receiver_key
from tests.conftest import unique
from tests.fault_support import FaultStack, fault_stack
from tests.fault_traffic import Chat, duplicated, join_when_invited, matrix_send, merged
from tests.helpers import eventually, matrix_user
from tests.realtime_support import BridgeProcess, Recorder, conversation_of

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


def acknowledged(answers: list[Answer]) -> dict[str, list[str]]:
    """Transaction id -> the processes that answered it 200, in order."""
    acks: dict[str, list[str]] = {}
    for answer in answers:
        if answer.txn_id is not None and answer.method == "PUT" and answer.status == 200:
            acks.setdefault(answer.txn_id, []).append(answer.upstream)
    return acks


ROOT = Path(__file__).resolve().parent.parent
# One line per upstream tried: nginx lists them comma-separated in one request's line.
_LOG_FORMAT = "$msec $request_method $uri $upstream_addr|$upstream_status"


class NginxReceivers:
    """deploy/nginx.conf's homeserver door, run by nginx on loopback."""

    available = shutil.which("nginx") is not None

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.root = root / "nginx"
        self.proc: subprocess.Popen[bytes] | None = None
        self._started = time.monotonic()
        self._offset = time.time() - time.monotonic()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self, upstreams: list[str]) -> str:
        shipped = (ROOT / "deploy" / "nginx.conf").read_text()
        upstream = re.search(r"upstream receivers \{.*?\n\}", shipped, re.DOTALL)
        door = re.search(r"server \{\n    listen 29340;.*?\n\}", shipped, re.DOTALL)
        assert upstream and door, "deploy/nginx.conf lost its receivers upstream or its door"
        names = re.findall(r"server (\S+:29340)", upstream.group(0))
        block = upstream.group(0)
        for name, url in zip(names, upstreams, strict=True):
            block = block.replace(f"server {name}", f"server {url.removeprefix('http://')}")
        server = door.group(0).replace("listen 29340;", f"listen 127.0.0.1:{self.port};")
        r = self.root
        # As root, workers would run as nobody, who cannot write in pytest's private tmp.
        user = "user root;" if os.geteuid() == 0 else ""
        return f"""daemon off;
{user}
worker_processes 1;
pid {r}/nginx.pid;
error_log {r}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format answers '{_LOG_FORMAT}';
    access_log {r}/access.log answers;
    client_body_temp_path {r}/body;
    proxy_temp_path {r}/proxy;
    fastcgi_temp_path {r}/fastcgi;
    uwsgi_temp_path {r}/uwsgi;
    scgi_temp_path {r}/scgi;
{block}
{server}
}}
"""

    def spawn(self, upstreams: list[str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "nginx.conf"
        conf.write_text(self.config(upstreams))
        with open(self.root / "stderr.log", "wb") as errors:
            self.proc = subprocess.Popen(
                ["nginx", "-p", str(self.root), "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )

    async def start(self, upstreams: list[str]) -> NginxReceivers:
        self.spawn(upstreams)

        async def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (
                self.root / "stderr.log"
            ).read_text()
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            return True

        await eventually(listening, timeout=10, interval=0.05)
        return self

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    @property
    def answers(self) -> list[Answer]:
        out: list[Answer] = []
        path = self.root / "access.log"
        text = path.read_text() if path.exists() else ""
        for line in text.splitlines():
            msec, method, uri, rest = line.split(" ", 3)
            addrs, statuses = rest.split("|")
            at = float(msec) - self._offset  # on the monotonic clock, as the router's
            for addr, status in zip(addrs.split(", "), statuses.split(", "), strict=False):
                code = int(status) if status.isdigit() else 0
                out.append(Answer(at, f"http://{addr}", method, uri, code))
        return out

    def acknowledged(self) -> dict[str, list[str]]:
        return acknowledged(self.answers)


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

    async def start(self, upstreams: list[str]) -> ReceiverRouter:
        self.upstreams = upstreams
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
        return acknowledged(self.answers)


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


@dataclass
class Pair:
    fs: FaultStack
    router: ReceiverRouter | NginxReceivers
    standby: BridgeProcess

    @property
    def processes(self) -> list[BridgeProcess]:
        return [self.fs.bridge, self.standby]


@contextlib.asynccontextmanager
async def receiver_pair(root: Path, proxy: str = "router") -> AsyncIterator[Pair]:
    """The fault stack (a private PostgreSQL cluster) with a second process configured to
    receive, both behind the proxy (``router`` or ``nginx``) the registration points at.
    The proxy starts once both processes are up: the first one's startup ping is retried
    until it goes through."""
    router = NginxReceivers(root) if proxy == "nginx" else ReceiverRouter()
    overrides = {
        "appservice.address": router.url,
        "api.rate_limit.send_requests": 10000,
        "api.rate_limit.requests": 10000,
    }
    try:
        async with fault_stack(root, bridge_db="private", **overrides) as fs:
            standby = BridgeProcess(receiver_config(fs.config), root, "standby")
            await standby.start()
            try:
                await router.start([fs.bridge.url, standby.url])
                yield Pair(fs, router, standby)
            finally:
                standby.stop()
    finally:
        await router.stop()


async def burst(fs: FaultStack, sender: Any, room_id: str, bodies: list[str], workers: int) -> None:
    queue = list(bodies)

    async def worker(n: int) -> None:
        while queue:
            body = queue.pop(0)
            await matrix_send(sender, room_id, body, txn_id=f"{n}-{body}")

    await asyncio.gather(*(worker(n) for n in range(workers)))


async def project_with_element_user(fs: FaultStack, name: str) -> tuple[Any, str, str, str]:
    """A project room with a CRM reader (bob) and a plain Matrix user (carol) who joined."""
    carol = await matrix_user(fs.synapse, unique("carol"))
    bob_id = await fs.directory.user(f"Bob {name}")
    carol_id = await fs.directory.user(f"Carol {name}", matrix_id=carol.user_id)
    project = await fs.directory.project(unique("p"), name, [bob_id, carol_id], bob_id)
    await join_when_invited(carol, project["roomId"])
    return carol, bob_id, conversation_of(project), project["roomId"]


async def failover_during_burst(pair: Pair, messages: int, workers: int = 3) -> dict[str, Any]:
    """Kill the receiver with SIGKILL a quarter into a burst from a matrix-nio user; a socket
    on a facade process counts what it gets. Returns the figures."""
    fs, router = pair.fs, pair.router
    facade = await fs.facade("facade").start()
    carol, bob_id, cid, room_id = await project_with_element_user(fs, "Failover")
    bodies = [f"burst {i:04d}" for i in range(messages)]
    socket = await Recorder("bob on facade").connect(facade.url, fs.token(bob_id))
    figures: dict[str, Any] = {"messages": messages}
    try:
        sending = asyncio.create_task(burst(fs, carol, room_id, bodies, workers))

        async def a_quarter_live() -> bool:
            assert not sending.done() or sending.exception() is None
            return len(socket.of("new_message")) >= messages // 4

        await eventually(a_quarter_live, timeout=300, interval=0.02)
        victim, survivor = pair.fs.bridge, pair.standby
        assert await role_of(victim.url) == "receiver"
        victim.kill()
        killed = time.monotonic()

        async def survivor_receives() -> bool:
            return await role_of(survivor.url) == "receiver"

        await eventually(survivor_receives, timeout=15, interval=0.05)
        figures["lock_taken_s"] = round(time.monotonic() - killed, 2)

        def first_on_survivor() -> float | None:
            for answer in router.answers:
                ours = answer.upstream == survivor.url and answer.txn_id is not None
                if ours and answer.status == 200 and answer.at > killed:
                    return answer.at
            return None

        async def landed() -> bool:
            return first_on_survivor() is not None

        await eventually(landed, timeout=60, interval=0.05)
        figures["first_txn_on_standby_s"] = round((first_on_survivor() or 0) - killed, 2)
        await asyncio.wait_for(sending, timeout=600)

        async def all_live() -> bool:
            return {m["content"] for m in socket.of("new_message")} >= set(bodies)

        try:
            await eventually(all_live, timeout=max(30.0, messages / 20), interval=0.2)
        except AssertionError:
            pass  # what did not come live must come by catch-up, counted below
        live = socket.of("new_message")
        async with aiohttp.ClientSession() as session:
            bob = Chat(session, facade.url, fs.token(bob_id))
            fetched = await bob.catch_up(cid, live[-1]["cursor"] if live else None)
            view = [m["content"] for m in merged(live, fetched).values()]
            figures["missing"] = sorted(set(bodies) - set(view))
            if figures["missing"]:
                figures["why_missing"] = await why_missing(fs, bob, cid, figures["missing"])
        figures["live"] = len(live)
        figures["caught_up"] = len(fetched)
        figures["duplicated"] = duplicated(view)
        figures["live_duplicated"] = duplicated(m["_id"] for m in live)
    finally:
        await socket.close()
        await carol.close()
        facade.stop()
    print(f"\nfailover: {figures}")
    return figures


async def why_missing(fs: FaultStack, bob: Chat, cid: str, missing: list[str]) -> dict[str, Any]:
    """For messages a socket never got: whether the index has them (history), so the
    delivery log (realtime/log.py) had them to deliver."""
    history = {m["content"]: m for m in await bob.history(cid)}
    return {"in_index": [b for b in missing if b in history]}
