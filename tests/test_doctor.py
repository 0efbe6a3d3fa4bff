"""``python -m bridge doctor`` against real parts: each misconfiguration, its own test.

Two homeservers: the session's Synapse, whose registration points at the session bridge
(so the doctor uses the running bridge for the ping), and a private one whose registration
points at a port nobody holds (so the doctor listens there itself, as when the bridge is
stopped). A registration names exactly one appservice URL, hence the second Synapse.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from bridge.config import Config
from bridge.devstack.synapse import SynapseProcess, free_port

from .conftest import POSTGRES_DSN, Stack, create_schema, drop_schema, generate_config
from .conftest import postgres_args as pg_args

pytestmark = pytest.mark.integration


@dataclass
class Doctor:
    returncode: int
    stdout: str
    stderr: str

    def line(self, check: str) -> str:
        """The one line about ``check``."""
        found = [line for line in self.stdout.splitlines() if line[6:].startswith(check + " ")]
        assert len(found) == 1, self.stdout
        return found[0]

    @property
    def failed(self) -> list[str]:
        return [line.split()[1] for line in self.stdout.splitlines() if line.startswith("FAIL")]


async def doctor(config: Path, registration: Path) -> Doctor:
    """The real CLI, as a child: the session bridge in this process keeps answering."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "doctor", "-c", str(config), "-r", str(registration),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return Doctor(proc.returncode, out.decode(), err.decode())


def edit(path: Path, **values: object) -> Path:
    data = yaml.safe_load(path.read_text())
    for dotted, value in values.items():
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def copy_of(source: Path, target: Path, **values: object) -> Path:
    target.write_text(source.read_text())
    return edit(target, **values)


@dataclass
class Private:
    """A Synapse whose registration points at ``port``, where no bridge runs."""

    synapse: SynapseProcess
    config: Path
    registration: Path
    port: int


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Private]:
    root = tmp_path_factory.mktemp("doctor")
    synapse_port, bridge_port = free_port(), free_port()
    config, registration = generate_config(
        root / "bridge",
        **{
            "homeserver.address": f"http://127.0.0.1:{synapse_port}",
            "appservice.address": f"http://127.0.0.1:{bridge_port}",
            "appservice.port": bridge_port,
            "database.url": f"sqlite:{root / 'bridge' / 'bridge.db'}",
        },
    )
    synapse = SynapseProcess(root / "synapse", port=synapse_port, registration_files=[registration])
    synapse.start()
    try:
        asyncio.run(synapse.wait_ready())
        yield Private(synapse, config, registration, bridge_port)
    finally:
        synapse.stop()


def session_config(stack: Stack, tmp_path: Path, **values: object) -> tuple[Path, Path]:
    """The session bridge's own config and registration, as files, with some values changed."""
    config = Config(dict(stack.config.data))
    path = tmp_path / "config.yaml"
    config.save(path)
    if values:
        edit(path, **values)
    registration = Path(str(stack.config.path)).with_name("registration.yaml")
    return path, registration


async def test_all_good_while_the_bridge_is_stopped(private: Private, tmp_path: Path) -> None:
    result = await doctor(private.config, private.registration)
    assert result.returncode == 0, result.stdout
    assert "pinged us with appservice.hs_token" in result.line("hs_token")
    assert "bridge stopped" in result.line("ping")
    assert result.stdout.strip().splitlines()[-1].startswith("All 8 checks passed")
    assert result.stderr == ""


async def test_all_good_with_the_bridge_running(stack: Stack, tmp_path: Path) -> None:
    config, registration = session_config(stack, tmp_path)
    result = await doctor(config, registration)
    assert result.returncode == 0, result.stdout
    assert "the running bridge" in result.line("ping")
    assert "is current" in result.line("database")
    assert result.line("redis").startswith("ok")
    # Never a secret in what it prints.
    for secret in ("appservice.as_token", "appservice.hs_token", "admin_api.token"):
        assert stack.config[secret] not in result.stdout + result.stderr


async def test_wrong_hs_token_seen_by_the_doctor_listening(
    private: Private, tmp_path: Path
) -> None:
    config = copy_of(private.config, tmp_path / "config.yaml", **{"appservice.hs_token": "x" * 64})
    result = await doctor(config, tmp_path / "no-registration-here.yaml")
    assert result.returncode == 1
    assert result.failed == ["hs_token"], result.stdout
    line = result.line("hs_token")
    assert "different hs_token than appservice.hs_token" in line and "Fix: " in line
    assert result.line("as_token").startswith("ok")


async def test_wrong_hs_token_against_the_running_bridge(stack: Stack, tmp_path: Path) -> None:
    config, registration = session_config(stack, tmp_path, **{"appservice.hs_token": "y" * 64})
    result = await doctor(config, registration)
    assert result.returncode == 1
    assert set(result.failed) == {"registration", "hs_token"}, result.stdout
    assert "refuses this config's hs_token" in result.line("hs_token")
    assert "hs_token" in result.line("registration")


async def test_homeserver_down(private: Private, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    config = copy_of(private.config, tmp_path / "config.yaml", **{"homeserver.address": closed})
    result = await doctor(config, private.registration)
    assert result.returncode == 1
    assert result.failed == ["homeserver"], result.stdout
    assert closed in result.line("homeserver") and "Fix: start the homeserver" in result.stdout
    assert result.line("as_token").startswith("skip")
    assert result.line("ping").startswith("skip")


async def test_database_unreachable(stack: Stack, tmp_path: Path) -> None:
    dsn = f"postgres://bridge:hunter2@127.0.0.1:{free_port()}/bridge"
    config, registration = session_config(
        stack, tmp_path, **{"database.url": dsn, "database.args": {}}
    )
    result = await doctor(config, registration)
    assert result.returncode == 1
    assert result.failed == ["database"], result.stdout
    line = result.line("database")
    assert "cannot open" in line and "check database.url" in line
    assert "hunter2" not in result.stdout


async def test_redis_unreachable(stack: Stack, tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    config, registration = session_config(stack, tmp_path, **{"redis.url": url})
    result = await doctor(config, registration)
    assert result.returncode == 1
    assert result.failed == ["redis"], result.stdout
    assert "does not answer PING" in result.line("redis")


async def test_stale_registration_tokens(private: Private, tmp_path: Path) -> None:
    """The config got new tokens; the registration file and the homeserver kept the old."""
    config = copy_of(
        private.config, tmp_path / "config.yaml",
        **{"appservice.as_token": "a" * 64, "appservice.hs_token": "h" * 64},
    )  # fmt: skip
    result = await doctor(config, private.registration)
    assert result.returncode == 1
    assert set(result.failed) == {"registration", "as_token"}, result.stdout
    assert "as_token" in result.line("registration") and "stale" in result.line("registration")
    assert "refuses appservice.as_token (M_UNKNOWN_TOKEN)" in result.line("as_token")
    assert result.line("ping").startswith("skip")


async def test_stale_registration_url(private: Private, tmp_path: Path) -> None:
    """The bridge moved to another port; the homeserver still calls the old one."""
    port = free_port()
    config = copy_of(
        private.config, tmp_path / "config.yaml",
        **{"appservice.port": port, "appservice.address": f"http://127.0.0.1:{port}"},
    )  # fmt: skip
    result = await doctor(config, private.registration)
    assert result.returncode == 1
    assert set(result.failed) == {"registration", "ping"}, result.stdout
    assert "url" in result.line("registration")
    assert "cannot reach the appservice at its registration's url" in result.line("ping")


async def test_example_secrets(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"database: {{url: 'sqlite:{tmp_path}/b.db'}}\n")
    result = await doctor(config, tmp_path / "registration.yaml")
    assert result.returncode == 1
    assert "config" in result.failed
    assert "example value" in result.line("config") and "python -m bridge -g" in result.stdout


@pytest.mark.parametrize("version, status", [(99, "FAIL"), (3, "warn")])
async def test_database_schema_version(version: int, status: str, tmp_path: Path) -> None:
    """Ahead of this bridge: a downgrade, a problem. Behind: migrated on the next start."""
    from bridge.db import create_database
    from bridge.doctor.local import check_database

    schema = await create_schema()
    try:
        db = create_database(POSTGRES_DSN, pg_args(schema))
        await db.start()
        await db.execute(f"UPDATE bridge_version SET version={version}")
        await db.stop()
        config = Config.load(None, environ={})
        config.set("database.url", POSTGRES_DSN)
        config.set("database.args", pg_args(schema))
        finding = await check_database(config)
        assert finding.status.value == status, finding
        assert f"v{version}" in finding.message and finding.fix
    finally:
        await drop_schema(schema)


async def test_bridge_answering_elsewhere(stack: Stack, tmp_path: Path) -> None:
    """Doctor run on a host where the bridge is not (its port here is free): the homeserver's
    ping reaches the real bridge, not the doctor, which says so."""
    config, registration = session_config(stack, tmp_path, **{"appservice.port": free_port()})
    result = await doctor(config, registration)
    assert result.returncode == 1
    assert result.failed == ["ping"], result.stdout
    assert "another process answered the homeserver's ping" in result.line("ping")


async def test_facade_process_skips_the_ping(stack: Stack, tmp_path: Path) -> None:
    config, registration = session_config(
        stack, tmp_path, **{"appservice.receive_transactions": False}
    )
    result = await doctor(config, registration)
    assert result.returncode == 0, result.stdout
    assert result.line("ping").startswith("skip") and "facade" in result.line("ping")
    assert result.line("as_token").startswith("ok")
