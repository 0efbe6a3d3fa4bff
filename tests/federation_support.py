"""Homeservers that federate on loopback, with the bridge on the first one.

``ours`` (``localhost:<port>``) runs the bridge; ``partner`` (``127.0.0.1:<port>``) is an
allowed server whose users are guests; ``outsider`` (``127.0.0.2:<port>``) is a server the
bridge does not allow. Server ACLs match hosts without ports, so each server has a host of
its own. Every run gets fresh databases: a failed federation attempt leaves a backoff in the
database that survives restarts (shared/notes/federation-on-loopback.md, trap 2).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from bridge.app import BridgeServer
from bridge.config import Config
from bridge.context import MATRIX
from bridge.devstack.federation import make_certificate
from bridge.devstack.synapse import SynapseProcess, free_port
from bridge.startup import ping_until_ok
from tests.conftest import (
    POSTGRES_DSN,
    REDIS_URL,
    create_schema,
    drop_schema,
    generate_config,
    postgres_args,
)

PARTNER_HOST = "127.0.0.1"
OUTSIDER_HOST = "127.0.0.2"


@dataclass
class Federation:
    ours: SynapseProcess
    partner: SynapseProcess
    outsider: SynapseProcess
    server: BridgeServer
    config: Config

    @property
    def app(self):
        return self.server.app

    @property
    def bridge_url(self) -> str:
        return self.config["appservice.address"]


def _synapse(base: Path, name: str, host: str, tls, registrations=None) -> SynapseProcess:
    federation_port = free_port()
    return SynapseProcess(
        base / name,
        port=free_port(),
        server_name=f"{host}:{federation_port}",
        registration_files=registrations,
        federation=tls,
    )


@asynccontextmanager
async def federation(base: Path, **config_overrides: object) -> AsyncIterator[Federation]:
    tls = make_certificate(base / "tls")
    ours_fed, ours_client, bridge_port = free_port(), free_port(), free_port()
    domain = f"localhost:{ours_fed}"
    config_path, registration = generate_config(
        base / "bridge",
        **{
            "homeserver.address": f"http://127.0.0.1:{ours_client}",
            "homeserver.domain": domain,
            "homeserver.retry_budget": 20,
            "appservice.address": f"http://127.0.0.1:{bridge_port}",
            "appservice.port": bridge_port,
            "realtime.offline_grace": 1,
            "federation.allowed_servers": [PARTNER_HOST],
            **config_overrides,
        },
    )
    ours = SynapseProcess(
        base / "ours",
        port=ours_client,
        server_name=domain,
        registration_files=[registration],
        federation=tls,
    )
    partner = _synapse(base, "partner", PARTNER_HOST, tls)
    outsider = _synapse(base, "outsider", OUTSIDER_HOST, tls)
    started: list[SynapseProcess] = []
    schema = await create_schema()
    server: BridgeServer | None = None
    try:
        for synapse in (ours, partner, outsider):
            synapse.start()
            started.append(synapse)
        await asyncio.gather(*(s.wait_ready() for s in started))
        config = Config.load(config_path, environ={})
        config.set("database.url", POSTGRES_DSN)
        config.set("database.args", postgres_args(schema))
        config.set("redis.url", REDIS_URL)
        config.validate()
        server = BridgeServer(config)
        await server.start(ping=False)
        assert await ping_until_ok(server.app[MATRIX], attempts=30, interval=0.5)
        yield Federation(ours, partner, outsider, server, config)
    finally:
        if server is not None:
            await server.stop()
        for synapse in started:
            synapse.stop()
        await drop_schema(schema)
