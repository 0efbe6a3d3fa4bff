"""Real processes for fault tests: a Synapse of its own (SQLite or PostgreSQL), the bridge as
a child process that can be killed, and a private Redis that can be stopped.

Fault tests never touch the session's Synapse, bridge or the machine's Redis, which the other
tests share: a registration points at exactly one appservice URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from bench.common import postgres_database
from bridge.api.auth import JwtVerifier
from bridge.config import Config
from bridge.devstack.synapse import SynapseProcess, free_port
from bridge.devstack.workers import SynapseWorkers
from bridge.ids import IdMapper
from tests.conftest import (
    POSTGRES_DSN,
    REDIS_URL,
    create_schema,
    drop_schema,
    generate_config,
    postgres_args,
)
from tests.helpers import eventually
from tests.realtime_support import BridgeProcess, Directory, facade_config


class PrivateRedis:
    """``redis-server`` on a free loopback port, stoppable without disturbing other tests."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def spawn(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    async def start(self) -> None:
        self.spawn()

        async def answers() -> bool:
            client = aioredis.Redis.from_url(self.url)
            try:
                return bool(await client.ping())
            except Exception:
                return False
            finally:
                await client.aclose()

        await eventually(answers, timeout=10, interval=0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class PrivatePostgres:
    """A PostgreSQL cluster of its own on a free loopback port (trust auth), to restart under
    traffic without touching the machine's server, which the other tests share.

    PostgreSQL refuses to run as root, so the cluster runs as the ``postgres`` OS user, in a
    directory that user owns (pytest's tmp_path is private to root).
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="fault-pg-"))
        self.data = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1]).parent
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        else:
            self._as = []

    @property
    def dsn(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self._as, str(self.bin / tool), *args], check=True, capture_output=True, timeout=60
        )

    def _initdb(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")  # fmt: skip

    def _start(self) -> None:
        # fsync=off only risks data on an OS crash; a killed server loses nothing. Commits
        # stay synchronous: with synchronous_commit=off a crash (stop -m immediate) drops
        # the last acknowledged commits, and the bridge loses what it had acknowledged.
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c fsync=off -c max_connections=50"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", options,
                  "-w", "-t", "30", "start")  # fmt: skip

    def _stop(self, mode: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    async def start(self) -> None:
        if not self.data.exists():
            await asyncio.to_thread(self._initdb)
        await asyncio.to_thread(self._start)

    async def stop(self, mode: str = "fast") -> None:
        """``fast`` disconnects every client (as a restart by an operator does); ``immediate``
        is a crash (recovery from WAL on the next start)."""
        await asyncio.to_thread(self._stop, mode)

    async def restart(self, down: float = 1.0, mode: str = "fast") -> tuple[float, float]:
        """Stop, stay down ``down`` seconds, start; returns (stopped_at, started_at) on the
        monotonic clock."""
        await self.stop(mode)
        stopped = time.monotonic()
        await asyncio.sleep(down)
        await self.start()
        return stopped, time.monotonic()

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError):
                self._stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class FaultStack:
    synapse: SynapseProcess | SynapseWorkers
    bridge: BridgeProcess
    config: Config
    directory: Directory
    verifier: JwtVerifier
    redis: PrivateRedis | None
    root: Path
    postgres: PrivatePostgres | None = None

    @property
    def url(self) -> str:
        return self.bridge.url

    def token(self, crm_user_id: str, ttl: int = 86400) -> str:
        return self.verifier.mint(crm_user_id, ttl=ttl)

    def facade(self, name: str) -> BridgeProcess:
        """A facade-only process beside the bridge (same database, Redis and secrets)."""
        return BridgeProcess(facade_config(self.config), self.root, name)

    async def as_puppet(
        self,
        method: str,
        path: str,
        crm_user_id: str,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Synapse's client-server API called straight as the user's puppet (nothing goes
        through the facade); ``{mxid}`` in ``path`` (under ``/_matrix/client/v3/``) stands
        for the puppet."""
        mxid = IdMapper.from_config(self.config).puppet_mxid(crm_user_id)
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method,
                f"{self.synapse.url}/_matrix/client/v3/{path.format(mxid=mxid)}",
                params={**(params or {}), "user_id": mxid},
                json=json,
                headers={"Authorization": f"Bearer {self.config['appservice.as_token']}"},
            ) as resp,
        ):
            return resp.status, await resp.json()


@contextlib.asynccontextmanager
async def fault_stack(
    root: Path,
    *,
    synapse_db: str = "sqlite",
    redis: str | None = "private",
    bridge_db: str = "shared",
    synapse_config: dict[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[FaultStack]:
    """Synapse on ``synapse_db`` ("sqlite", "postgres", or "workers": PostgreSQL, split into
    workers as bridge/devstack/workers.py does; ``synapse_config`` on top of the devstack's),
    the bridge as a child process on ``bridge_db``: PostgreSQL "shared" (a
    schema on the machine's server) or "private" (a cluster of its own, restartable:
    ``fs.postgres``), or "sqlite" (a file beside its config), and Redis: "private"
    (stoppable), "shared" (the machine's) or None."""
    synapse_port, bridge_port = free_port(), free_port()
    config_path, registration = generate_config(
        root / "bridge",
        **{
            "homeserver.address": f"http://127.0.0.1:{synapse_port}",
            "appservice.address": f"http://127.0.0.1:{bridge_port}",
            "appservice.port": bridge_port,
            "realtime.offline_grace": 1,
            "api.rate_limit.send_requests": 1000,
            "logging.loggers.bridge.level": "WARNING",
            **overrides,
        },
    )
    private = PrivateRedis(root / "redis") if redis == "private" else None
    async with contextlib.AsyncExitStack() as stack:
        postgres = None
        if bridge_db == "private":
            postgres = PrivatePostgres()
            stack.callback(postgres.close)
            await postgres.start()
            bridge_dsn, bridge_args = postgres.dsn, {"min_size": 1, "max_size": 10}
        elif bridge_db == "sqlite":
            bridge_dsn, bridge_args = f"sqlite:{root / 'bridge' / 'bridge.db'}", {}
        else:
            schema = await create_schema()
            stack.push_async_callback(drop_schema, schema)
            bridge_dsn, bridge_args = POSTGRES_DSN, postgres_args(schema)
        database = None
        if synapse_db in ("postgres", "workers"):
            created = await stack.enter_async_context(postgres_database("fault_synapse"))
            database = {
                "name": "psycopg2",
                "args": {"user": "postgres", "host": "127.0.0.1", "port": 5432,
                         "database": created["name"], "cp_min": 2, "cp_max": 10},
            }  # fmt: skip
        if private is not None:
            await private.start()
            stack.callback(private.stop)
        config = Config.load(config_path, environ={})
        config.set("database.url", bridge_dsn)
        config.set("database.args", bridge_args)
        config.set("redis.url", private.url if private else REDIS_URL if redis else None)
        synapse: SynapseProcess | SynapseWorkers
        if synapse_db == "workers":
            assert database is not None
            synapse = SynapseWorkers(
                root / "synapse", port=synapse_port, registration_files=[registration],
                database=database, extra_config=synapse_config, readers=1,
            )  # fmt: skip
        else:
            synapse = SynapseProcess(
                root / "synapse", port=synapse_port, registration_files=[registration],
                database=database, extra_config=synapse_config,
            )  # fmt: skip
        synapse.start()
        stack.callback(synapse.stop)
        bridge = BridgeProcess(config, root, "bridge")
        await synapse.wait_ready()
        await bridge.start()
        stack.callback(bridge.stop)
        yield FaultStack(
            synapse=synapse,
            bridge=bridge,
            config=config,
            directory=Directory(bridge.url, config["admin_api.token"]),
            verifier=JwtVerifier.from_config(config),
            redis=private,
            root=root,
            postgres=postgres,
        )
