"""Shared fixtures: a real Synapse, a real PostgreSQL schema per test, a running bridge.

The session starts one Synapse on a free loopback port, with the registration written by
``python -m bridge -g``, and one bridge in this process that Synapse talks to. Tests use
unique ids so they can share both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import yaml

from bench.common import postgres_database
from bridge.app import BridgeServer
from bridge.config import Config
from bridge.context import MATRIX
from bridge.db import create_database
from bridge.devstack.synapse import SynapseProcess, free_port
from bridge.devstack.workers import SynapseWorkers
from bridge.startup import ping_until_ok

POSTGRES_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgres://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Replication lag of the worker-mode stack's client reader (bridge/devstack/lag.py), so the
# core tests meet a reader behind the event persister; docs/architecture.md, "Synapse with
# workers", lists what it showed and how the bridge hides it. 0 turns it off.
READER_LAG_MS = int(os.environ.get("TEST_SYNAPSE_READER_LAG_MS") or 300)


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


# PostgreSQL: one schema per test, dropped afterwards.
async def create_schema() -> str:
    schema = unique("test_")
    conn = await asyncpg.connect(POSTGRES_DSN)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    return schema


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(POSTGRES_DSN)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def postgres_args(schema: str) -> dict:
    return {"server_settings": {"search_path": schema}, "min_size": 1, "max_size": 10}


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator:
    """An upgraded bridge database on each engine."""
    if request.param == "sqlite":
        database = create_database(f"sqlite:{tmp_path / 'bridge.db'}")
        await database.start()
        yield database
        await database.stop()
    else:
        schema = await create_schema()
        database = create_database(POSTGRES_DSN, postgres_args(schema))
        await database.start()
        yield database
        await database.stop()
        await drop_schema(schema)


def generate_config(directory: Path, **overrides: object) -> tuple[Path, Path]:
    """Run the real ``python -m bridge -g``, then set test values in the config."""
    directory.mkdir(parents=True, exist_ok=True)
    config_path, registration_path = directory / "config.yaml", directory / "registration.yaml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge",
            "-g",
            "-c",
            str(config_path),
            "-r",
            str(registration_path),
        ],
        check=True,
        capture_output=True,
    )
    data = yaml.safe_load(config_path.read_text())
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge",
            "-g",
            "-c",
            str(config_path),
            "-r",
            str(registration_path),
        ],
        check=True,
        capture_output=True,
    )
    return config_path, registration_path


class Stack:
    """What the session-wide fixtures started, for tests to reach into."""

    def __init__(
        self, synapse: SynapseProcess | SynapseWorkers, config: Config, server: BridgeServer
    ) -> None:
        self.synapse = synapse
        self.config = config
        self.server = server

    @property
    def app(self):
        return self.server.app

    @property
    def bridge_url(self) -> str:
        return self.config["appservice.address"]


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def synapse_and_config(stack_dir: Path) -> Iterator[tuple[SynapseProcess, Path]]:
    synapse_port = free_port()
    config_path, registration_path = stack_config(synapse_port, stack_dir / "bridge")
    synapse = SynapseProcess(
        stack_dir / "synapse",
        port=synapse_port,
        registration_files=[registration_path],
        extra_config=with_lagging_sends(stack_dir / "synapse"),
    )
    synapse.start()
    try:
        asyncio.run(synapse.wait_ready())
        yield synapse, config_path
    finally:
        synapse.stop()


def stack_config(synapse_port: int, directory: Path) -> tuple[Path, Path]:
    """The bridge's config and registration for a session homeserver on ``synapse_port``."""
    bridge_port = free_port()
    return generate_config(
        directory,
        **{
            "homeserver.address": f"http://127.0.0.1:{synapse_port}",
            "homeserver.domain": "localhost",
            "homeserver.retry_budget": 20,
            "appservice.address": f"http://127.0.0.1:{bridge_port}",
            "appservice.port": bridge_port,
            "realtime.offline_grace": 1,
        },
    )


def with_lagging_sends(data_dir: Path) -> dict:
    """Synapse runs in its data directory, whose path is first on its sys.path: the test
    module that delays marked messages (tests/synapse_lag.py) is imported from there."""
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).with_name("synapse_lag.py"), data_dir)
    return {"modules": [{"module": "synapse_lag.LaggingSends", "config": {}}]}


@pytest.fixture(scope="session")
async def stack(synapse_and_config: tuple[SynapseProcess, Path]) -> AsyncIterator[Stack]:
    async with bridge_stack(*synapse_and_config) as started:
        yield started


@pytest.fixture(scope="session")
async def workers_stack(stack_dir: Path) -> AsyncIterator[Stack]:
    """The same as ``stack``, against Synapse with workers (bridge/devstack/workers.py) on a
    PostgreSQL database of its own, reads on a worker apart from sends (``readers=1``):
    tests/test_synapse_workers.py runs the core tests on it."""
    port = free_port()
    config_path, registration_path = stack_config(port, stack_dir / "workers-bridge")
    data_dir = stack_dir / "workers-synapse"
    async with postgres_database("test_synapse_workers") as created:
        database = {
            "name": "psycopg2",
            "args": {"user": "postgres", "host": "127.0.0.1", "port": 5432,
                     "database": created["name"], "cp_min": 1, "cp_max": 5},
        }  # fmt: skip
        synapse = SynapseWorkers(
            data_dir, port=port, database=database, registration_files=[registration_path],
            extra_config=with_lagging_sends(data_dir), readers=1, reader_lag_ms=READER_LAG_MS,
        )  # fmt: skip
        synapse.start()
        try:
            await synapse.wait_ready()
            async with bridge_stack(synapse, config_path) as started:
                yield started
        finally:
            synapse.stop()


@contextlib.asynccontextmanager
async def bridge_stack(
    synapse: SynapseProcess | SynapseWorkers, config_path: Path
) -> AsyncIterator[Stack]:
    """The in-process bridge of a session stack, on a PostgreSQL schema of its own."""
    schema = await create_schema()
    config = Config.load(config_path, environ={})
    config.set("database.url", POSTGRES_DSN)
    config.set("database.args", postgres_args(schema))
    config.set("redis.url", REDIS_URL)
    config.validate()
    server = BridgeServer(config)
    await server.start(ping=False)
    # Synapse ignores pings until its appservice scheduler runs; retry until it answers.
    assert await ping_until_ok(server.app[MATRIX], attempts=30, interval=0.5)
    try:
        yield Stack(synapse, config, server)
    finally:
        await server.stop()
        await drop_schema(schema)
