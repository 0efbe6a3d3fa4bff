"""A homeserver that rate-limits the bridge: 429s are waited out and the sync converges.

The session Synapse exempts the appservice (``rate_limited: false``, as production
registrations do), so this module starts a second, small Synapse whose registration says
``rate_limited: true`` and whose limits are tight.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml

from bridge.app import BridgeServer
from bridge.config import Config
from bridge.context import HOMESERVER, IDS, MATRIX, PROJECTS
from bridge.crm import operations
from bridge.crm.rooms import read_room
from bridge.crm.snapshot import parse_snapshot
from bridge.devstack.synapse import SynapseProcess, free_port
from bridge.startup import ping_until_ok

from .conftest import POSTGRES_DSN, create_schema, drop_schema, generate_config, postgres_args

pytestmark = pytest.mark.integration

TIGHT = {"per_second": 1, "burst_count": 3}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SynapseProcess, Path]]:
    root = tmp_path_factory.mktemp("limited")
    synapse_port, bridge_port = free_port(), free_port()
    config_path, registration_path = generate_config(
        root / "bridge",
        **{
            "homeserver.address": f"http://127.0.0.1:{synapse_port}",
            "homeserver.domain": "localhost",
            "homeserver.retry_budget": 120,
            "appservice.address": f"http://127.0.0.1:{bridge_port}",
            "appservice.port": bridge_port,
        },
    )
    registration = yaml.safe_load(registration_path.read_text())
    registration["rate_limited"] = True
    registration_path.write_text(yaml.safe_dump(registration))
    synapse = SynapseProcess(
        root / "synapse",
        port=synapse_port,
        registration_files=[registration_path],
        extra_config={
            "rc_message": TIGHT,
            "rc_joins": {"local": TIGHT, "remote": TIGHT},
            "rc_invites": {"per_room": TIGHT, "per_user": TIGHT, "per_issuer": TIGHT},
            "rc_room_creation": TIGHT,
        },
    )
    synapse.start()
    try:
        yield synapse, config_path
    finally:
        synapse.stop()


@pytest.fixture
async def limited_bridge(limited) -> AsyncIterator[BridgeServer]:
    synapse, config_path = limited
    await synapse.wait_ready()
    schema = await create_schema()
    config = Config.load(config_path, environ={})
    config.set("database.url", POSTGRES_DSN)
    config.set("database.args", postgres_args(schema))
    config.validate()
    server = BridgeServer(config)
    await server.start(ping=False)
    try:
        assert await ping_until_ok(server.app[MATRIX], attempts=30, interval=0.5)
        yield server
    finally:
        await server.stop()
        await drop_schema(schema)


async def test_rate_limited_sync_is_retried_and_converges(limited_bridge) -> None:
    app = limited_bridge.app
    users = [
        {"id": f"rl{i}", "name": f"R {i}", "email": f"r{i}@x", "role": "employee"} for i in range(8)
    ]
    projects = [
        {"id": f"rlp{j}", "name": f"RL {j}", "members": [u["id"] for u in users[j : j + 6]]}
        for j in range(2)
    ]
    snapshot = parse_snapshot({"users": users, "projects": projects}, ["employee"])
    result = await operations.sync(app, snapshot)
    assert not result["errors"], result
    assert app[HOMESERVER].rate_limited > 0  # the homeserver did push back
    for p in projects:
        room_id = (await app[PROJECTS].get(p["id"])).room_id
        actual = await read_room(app[MATRIX], room_id)
        joined = {m for m, s in actual.members.items() if s == "join"} - {app[IDS].bot_mxid}
        assert joined == {app[IDS].puppet_mxid(m) for m in p["members"]}
    again = await operations.sync(app, snapshot)
    assert again["writes"] == {"planned": 0, "made": 0}
