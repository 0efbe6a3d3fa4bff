"""Shared benchmark plumbing: Synapse on PostgreSQL, the bridge beside it, and statistics.

Benchmarks compare the bridge with Synapse called directly *in the same run*, because the
homeserver is the physical limit and this machine's speed varies by ±30-40% between runs.
Every loop is bounded in count and time; every server binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import cProfile
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import yaml
from aiohttp import web

from bridge.app import BridgeServer
from bridge.config import Config
from bridge.context import MATRIX
from bridge.devstack.synapse import SynapseProcess, free_port
from bridge.devstack.workers import SynapseWorkers
from bridge.startup import ping_until_ok

# `python -m bench.run --profile` sets this: each benchmark writes a cProfile of the bridge
# during its measured phases there, one `<name>.prof` per phase.
PROFILE_DIR_ENV = "BENCH_PROFILE_DIR"
POSTGRES_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgres://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass
class BenchStack:
    synapse: SynapseProcess | SynapseWorkers
    config: Config
    server: BridgeServer
    as_token: str

    @property
    def app(self) -> web.Application:
        return self.server.app

    @property
    def bridge_url(self) -> str:
        return self.config["appservice.address"]


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * pct / 100
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(values_ms),
        "p50_ms": round(percentile(values_ms, 50), 2),
        "p95_ms": round(percentile(values_ms, 95), 2),
        "mean_ms": round(statistics.fmean(values_ms), 2) if values_ms else float("nan"),
    }


async def _admin_conn(dsn: str = POSTGRES_DSN) -> asyncpg.Connection:
    return await asyncpg.connect(dsn)


@asynccontextmanager
async def postgres_database(prefix: str) -> AsyncIterator[dict[str, Any]]:
    """A fresh database (UTF8, C collation, as Synapse requires), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    conn = await _admin_conn()
    try:
        await conn.execute(
            f"CREATE DATABASE {name} ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C' TEMPLATE template0"
        )
    finally:
        await conn.close()
    try:
        yield {"name": name, "dsn": POSTGRES_DSN.rsplit("/", 1)[0] + f"/{name}"}
    finally:
        conn = await _admin_conn()
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()


def write_config(root: Path, synapse_port: int, bridge_port: int) -> tuple[Path, Path]:
    """The real ``python -m bridge -g``, then the ports of this run."""
    config_path, registration_path = root / "config.yaml", root / "registration.yaml"
    run_g = [sys.executable, "-m", "bridge", "-g", "-c", str(config_path),
             "-r", str(registration_path)]  # fmt: skip
    subprocess.run(run_g, check=True, capture_output=True)
    data = yaml.safe_load(config_path.read_text())
    data["homeserver"].update(address=f"http://127.0.0.1:{synapse_port}", domain="localhost")
    data["appservice"].update(address=f"http://127.0.0.1:{bridge_port}", port=bridge_port)
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    subprocess.run(run_g, check=True, capture_output=True)
    return config_path, registration_path


@asynccontextmanager
async def bench_stack(
    *,
    synapse_on_postgres: bool = True,
    redis: bool = True,
    synapse_config: dict[str, Any] | None = None,
    synapse_workers: bool = False,
    **config_overrides: Any,
) -> AsyncIterator[BenchStack]:
    """Synapse (PostgreSQL by default; ``synapse_config`` on top of the devstack's;
    ``synapse_workers``: split into workers, bridge/devstack/workers.py) plus one in-process
    bridge on PostgreSQL."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        root = Path(tmp)
        synapse_port, bridge_port = free_port(), free_port()
        config_path, registration_path = write_config(root, synapse_port, bridge_port)

        async with (
            postgres_database("bench_synapse") as synapse_db,
            postgres_database("bench_bridge") as bridge_db,
        ):
            database = None
            if synapse_on_postgres:
                database = {
                    "name": "psycopg2",
                    "args": {"user": "postgres", "host": "127.0.0.1", "port": 5432,
                             "database": synapse_db["name"], "cp_min": 5, "cp_max": 10},
                }  # fmt: skip
            synapse: SynapseProcess | SynapseWorkers
            if synapse_workers:
                assert database is not None, "Synapse workers need PostgreSQL"
                synapse = SynapseWorkers(
                    root / "synapse", port=synapse_port, registration_files=[registration_path],
                    database=database, extra_config=synapse_config,
                )  # fmt: skip
            else:
                synapse = SynapseProcess(
                    root / "synapse", port=synapse_port, registration_files=[registration_path],
                    database=database, extra_config=synapse_config,
                )  # fmt: skip
            synapse.start()
            try:
                await synapse.wait_ready()
                config = Config.load(config_path, environ={})
                config.set("database.url", bridge_db["dsn"])
                config.set("database.args", {"min_size": 2, "max_size": 20})
                config.set("redis.url", REDIS_URL if redis else None)
                config.set("logging.loggers.bridge.level", "WARNING")
                for dotted, value in config_overrides.items():
                    config.set(dotted.replace("__", "."), value)
                config.validate()
                server = BridgeServer(config)
                await server.start(ping=False)
                gc.freeze()  # as `python -m bridge` does once started
                try:
                    if not await ping_until_ok(server.app[MATRIX], attempts=40, interval=0.5):
                        raise RuntimeError("Synapse never reached the bridge")
                    yield BenchStack(synapse, config, server, config["appservice.as_token"])
                finally:
                    await server.stop()
            finally:
                synapse.stop()


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--time-limit", type=float, default=600, help="stop after N seconds")
    return parser


def report(title: str, results: dict[str, Any], json_path: str | None) -> None:
    print(f"\n== {title} ==")
    print(json.dumps(results, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2))


class Deadline:
    """A time bound every benchmark loop checks."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def passed(self) -> bool:
        return time.monotonic() > self.end


def profiling() -> bool:
    return bool(os.environ.get(PROFILE_DIR_ENV))


@contextmanager
def profiled(name: str) -> Iterator[None]:
    """cProfile this process (the in-process bridge) while the block runs, if asked to."""
    directory = os.environ.get(PROFILE_DIR_ENV)
    if not directory:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(str(Path(directory) / f"{name}.prof"))


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process, MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=log, env=env)


@dataclass
class Facade:
    proc: subprocess.Popen
    url: str
    metrics_url: str


async def spawn_facade(main: Config, root: Path, name: str, profile: str | None = None) -> Facade:
    """Another bridge process on the same database and Redis that does not receive
    transactions (a facade process, `python -m bridge`), with its metrics on a port of its own.

    With ``profile`` (a phase name) and profiling on, it runs under ``python -m cProfile``
    and writes ``<phase>.prof`` when it is stopped with SIGTERM (a clean shutdown)."""
    config = Config(copy.deepcopy(main.data))
    port = free_port()
    config.set("appservice.port", port)
    config.set("appservice.address", f"http://127.0.0.1:{port}")
    config.set("appservice.receive_transactions", False)
    # A small pool: the machine's PostgreSQL is shared by every process of the run.
    config.set("database.args", {"min_size": 1, "max_size": 6})
    config.set("metrics.enabled", True)
    metrics_port = free_port()  # several facades at once
    config.set("metrics.listen_port", metrics_port)
    path = root / f"{name}.yaml"
    config.save(path)
    argv = [sys.executable]
    directory = os.environ.get(PROFILE_DIR_ENV)
    if profile and directory:
        argv += ["-m", "cProfile", "-o", str(Path(directory) / f"{profile}.prof")]
    proc = _spawn([*argv, "-m", "bridge", "-c", str(path)], root / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(600):  # bounded: 60 s
            try:
                async with session.get(url + "/health/ready") as resp:
                    if resp.status == 200:
                        return Facade(proc, url, f"http://127.0.0.1:{metrics_port}/metrics")
            except aiohttp.ClientError:
                pass
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"facade {name} did not start (see {root / (name + '.log')})")


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
