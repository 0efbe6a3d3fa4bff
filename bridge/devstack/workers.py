"""Synapse split into workers, for tests, benchmarks and ``python -m bridge dev
--synapse-workers``.

Five processes on loopback ports, as Synapse's worker documentation (docs/workers.md) lays a
deployment out, on PostgreSQL and Redis:

- ``main``: the main process (admin API, background tasks, what no worker serves);
- ``event_persister1``: the ``events`` stream writer, persisting every event;
- ``appservice1``: ``notify_appservices_from_worker``, sending the bridge its transactions;
- ``generic1``: the client API (sends, /messages, /context, /relations, state, members,
  search, sync, media) and the ``typing``, ``receipts`` and ``presence`` stream writer;
- with ``readers=1``, ``reader1``: a client reader for /messages, /context, /relations,
  members, state and search, apart from the worker that creates events, so a read right
  after a send can reach a process that has not replicated the event yet;
- the router (bridge/devstack/router.py), the one URL clients and the bridge use.

Replication runs over a Redis of its own (a ``redis-server`` on a free port), unless one is
given: Synapse publishes on a channel named after the server name, and every test homeserver
here is called ``localhost``, so two deployments on one Redis would read each other's streams.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import yaml

from .synapse import SynapseProcess, _die_with_parent, free_port

EVENT_PERSISTER = "event_persister1"
APPSERVICE_SENDER = "appservice1"
GENERIC_WORKER = "generic1"
READER = "reader1"


class RedisServer:
    """``redis-server`` on a free loopback port, nothing saved to disk."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )  # fmt: skip

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@dataclass
class _Worker:
    name: str
    client_port: int | None = None
    replication_port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    log: Any = field(default=None, repr=False)

    @property
    def health_url(self) -> str:
        port = self.client_port or self.replication_port
        return f"http://127.0.0.1:{port}/health"


class SynapseWorkers:
    """The worker-mode homeserver; ``url`` is the router's. Same surface as SynapseProcess
    (start, wait_ready, stop, restart, register_user, data_dir, shared_secret)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int,
        database: dict[str, Any],
        server_name: str = "localhost",
        registration_files: list[Path] | None = None,
        redis_url: str | None = None,
        extra_config: dict[str, Any] | None = None,
        readers: int = 0,
        reader_lag_ms: int = 0,
    ) -> None:
        if database.get("name") != "psycopg2":
            raise ValueError("Synapse workers need PostgreSQL (database.name: psycopg2)")
        self.data_dir = data_dir.resolve()
        self.port = port
        self.server_name = server_name
        self.redis = None if redis_url else RedisServer(self.data_dir / "redis")
        self.redis_url = redis_url
        self.workers = {
            "main": _Worker("main", free_port(), free_port()),
            EVENT_PERSISTER: _Worker(EVENT_PERSISTER, None, free_port()),
            APPSERVICE_SENDER: _Worker(APPSERVICE_SENDER, free_port(), None),
            GENERIC_WORKER: _Worker(GENERIC_WORKER, free_port(), free_port()),
        }
        if readers:
            self.workers[READER] = _Worker(READER, free_port(), None)
        # The reader's replication through bridge/devstack/lag.py, held back this long.
        self.reader_lag_ms = reader_lag_ms if readers else 0
        self.lag_port = free_port() if self.reader_lag_ms else None
        self.lag: subprocess.Popen[bytes] | None = None
        main = self.workers["main"]
        self.main = SynapseProcess(
            self.data_dir,
            port=main.client_port or 0,
            server_name=server_name,
            registration_files=registration_files,
            database=database,
            extra_config={**self.shared_config(), **(extra_config or {})},
        )
        self.router_port = port
        self.router: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}"

    @property
    def config_path(self) -> Path:
        return self.main.config_path

    @property
    def shared_secret(self) -> str:
        return self.main.shared_secret

    def _redis_host_port(self) -> tuple[str, int]:
        if self.redis is not None:
            return "127.0.0.1", self.redis.port
        parts = urlsplit(self.redis_url or "")
        return parts.hostname or "127.0.0.1", parts.port or 6379

    def shared_config(self) -> dict[str, Any]:
        """What every process reads (homeserver.yaml), on top of the devstack's settings."""
        host, port = self._redis_host_port()
        w = self.workers
        return {
            "listeners": [
                _listener(w["main"].client_port, ["client"]),
                _listener(w["main"].replication_port, ["replication"]),
            ],
            "redis": {"enabled": True, "host": host, "port": port},
            "instance_map": {
                name: {"host": "127.0.0.1", "port": worker.replication_port}
                for name, worker in w.items()
                if worker.replication_port
            },
            "stream_writers": {
                "events": EVENT_PERSISTER,
                "typing": GENERIC_WORKER,
                "receipts": GENERIC_WORKER,
                "presence": GENERIC_WORKER,
            },
            "notify_appservices_from_worker": APPSERVICE_SENDER,
            "worker_replication_secret": "devstack-replication",
        }

    def _worker_config(self, worker: _Worker) -> Path:
        listeners = []
        if worker.client_port:
            names = ["client", "media"] if worker.name == GENERIC_WORKER else ["client"]
            listeners.append(_listener(worker.client_port, names))
        if worker.replication_port:
            listeners.append(_listener(worker.replication_port, ["replication"]))
        path = self.data_dir / "workers" / f"{worker.name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "worker_app": "synapse.app.generic_worker",
            "worker_name": worker.name,
            "worker_listeners": listeners,
            "worker_log_config": str(self._log_config(worker.name)),
        }
        if worker.name == READER and self.lag_port:
            config["redis"] = {"enabled": True, "host": "127.0.0.1", "port": self.lag_port}
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _log_config(self, name: str) -> Path:
        """The main process's log config (warnings only), writing to ``<name>.log``."""
        source = self.data_dir / f"{self.server_name}.log.config"
        target = self.data_dir / "workers" / f"{name}.log.config"
        text = source.read_text().replace("homeserver.log", f"{name}.log")
        target.write_text(text)
        return target

    def _router_spec(self) -> Path:
        w = self.workers
        spec = {
            "port": self.router_port,
            "main": f"http://127.0.0.1:{w['main'].client_port}",
            "generic": f"http://127.0.0.1:{w[GENERIC_WORKER].client_port}",
            "appservice": f"http://127.0.0.1:{w[APPSERVICE_SENDER].client_port}",
        }
        if READER in w:
            spec["reader"] = f"http://127.0.0.1:{w[READER].client_port}"
        path = self.data_dir / "router.json"
        path.write_text(json.dumps(spec))
        return path

    def _spawn(self, argv: list[str], log_name: str) -> tuple[subprocess.Popen[bytes], Any]:
        log = open(self.data_dir / log_name, "ab")  # noqa: SIM115
        process = subprocess.Popen(
            argv,
            cwd=self.data_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        return process, log

    def start(self) -> None:
        """Redis and the main process; the workers follow in wait_ready(), once main has
        prepared the database schema (a worker refuses an uninitialised database)."""
        if self.redis is not None and (self.redis.process is None or self.redis.process.poll()):
            self.redis.start()
        self.main.start()  # writes homeserver.yaml (and generates it the first time)
        self.workers["main"].process = self.main.process

    def _start_workers(self) -> None:
        if self.lag_port and (self.lag is None or self.lag.poll() is not None):
            host, port = self._redis_host_port()
            argv = [sys.executable, "-m", "bridge.devstack.lag", str(self.lag_port), host,
                    str(port), str(self.reader_lag_ms)]  # fmt: skip
            self.lag, self._lag_log = self._spawn(argv, "lag.stdout.log")
        for worker in self.workers.values():
            if worker.name == "main" or (worker.process and worker.process.poll() is None):
                continue
            argv = [sys.executable, "-m", "synapse.app.generic_worker",
                    "--config-path", str(self.config_path),
                    "--config-path", str(self._worker_config(worker))]  # fmt: skip
            worker.process, worker.log = self._spawn(argv, f"{worker.name}.stdout.log")
        if self.router is None or self.router.poll() is not None:
            self.router, self._router_log = self._spawn(
                [sys.executable, "-m", "bridge.devstack.router", str(self._router_spec())],
                "router.stdout.log",
            )

    async def wait_ready(self, timeout: float = 120.0) -> None:
        """Main answers, the workers and the router start, each answers /health, then the
        router answers /versions."""
        deadline = time.monotonic() + timeout
        await self.main.wait_ready(timeout)
        self._start_workers()
        async with aiohttp.ClientSession() as session:
            for worker in self.workers.values():
                await _until_ok(session, worker.health_url, deadline, worker.process, worker.name)
            await _until_ok(
                session, f"{self.url}/_matrix/client/versions", deadline, self.router, "router"
            )

    def pids(self) -> dict[str, int]:
        """Each Synapse process's pid (for CPU accounting), and the router's."""
        out = {n: w.process.pid for n, w in self.workers.items() if w.process is not None}
        if self.router is not None:
            out["router"] = self.router.pid
        return out

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to every process at once, then wait for each (one by one would add up
        their shutdown times)."""
        others = [w.process for w in self.workers.values() if w.name != "main"]
        others += [self.router, self.lag]
        for process in [*others, self.main.process]:
            _signal(process, signal.SIGTERM)
        for process in others:
            _wait(process, timeout)
        for worker in self.workers.values():
            if worker.log is not None:
                worker.log.close()
                worker.log = None
        if self.router is not None:
            self._router_log.close()
            self.router = None
        if self.lag is not None:
            self._lag_log.close()
            self.lag = None
        self.main.stop(timeout)
        if self.redis is not None:
            self.redis.stop()

    async def restart(self) -> None:
        self.stop()
        self.start()
        await self.wait_ready()

    async def register_user(
        self, localpart: str, password: str, admin: bool = False
    ) -> dict[str, Any]:
        return await self.main.register_user(localpart, password, admin)


def _listener(port: int | None, names: list[str]) -> dict[str, Any]:
    return {
        "port": port,
        "bind_addresses": ["127.0.0.1"],
        "type": "http",
        "tls": False,
        "x_forwarded": False,
        "resources": [{"names": names, "compress": False}],
    }


async def _until_ok(
    session: aiohttp.ClientSession,
    url: str,
    deadline: float,
    process: subprocess.Popen[bytes] | None,
    name: str,
) -> None:
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"Synapse {name} exited with {process.returncode}")
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"Synapse {name} did not answer {url} in time")


def _signal(process: subprocess.Popen[bytes] | None, sig: int) -> None:
    if process is not None and process.poll() is None:
        os.killpg(process.pid, sig)


def _wait(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


async def ensure_database(dsn: str, name: str) -> dict[str, Any]:
    """Synapse's database on the server at ``dsn`` (created, UTF8 with C collation as Synapse
    requires, if it does not exist yet), as Synapse's ``database`` setting."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C' "
            "TEMPLATE template0"
        )
    except asyncpg.DuplicateDatabaseError:
        pass
    finally:
        await conn.close()
    parts = urlsplit(dsn)
    args: dict[str, Any] = {
        "user": parts.username or "postgres",
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "database": name,
        "cp_min": 1,
        "cp_max": 5,
    }
    if parts.password:
        args["password"] = parts.password
    return {"name": "psycopg2", "args": args}
