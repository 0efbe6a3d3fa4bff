"""The container kit without a Docker engine: the entry script's three paths run for real
(``python -m bridge`` in a temporary data directory), and the compose file and Dockerfile
parsed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bridge.config import EXAMPLE_SECRET
from bridge.devstack.synapse import free_port
from bridge.startup import ExitCode

ROOT = Path(__file__).resolve().parent.parent


def entry(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """docker-run.sh as the container runs it: working directory /data (here, ``data``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(DATA_DIR=str(data), PYTHON_BIN=sys.executable, PYTHONPATH=str(ROOT))
    return subprocess.run(
        ["sh", str(ROOT / "docker-run.sh"), *args],
        cwd=data, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_entry_script_writes_config_then_registration_then_runs_the_bridge(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    config, registration = data / "config.yaml", data / "registration.yaml"

    first = entry(data)
    assert first.returncode == 0, first.stderr
    assert "Copied the example config" in first.stdout
    example = resources.files("bridge").joinpath("example-config.yaml").read_text("utf-8")
    assert config.read_text("utf-8") == example
    assert not registration.exists()

    # The operator edits the config, as the first run asked.
    edited = yaml.safe_load(config.read_text())
    port = free_port()
    edited["homeserver"].update(address=f"http://127.0.0.1:{free_port()}", retry_budget=1)
    edited["appservice"].update(address=f"http://127.0.0.1:{port}", port=port)
    edited["database"]["url"] = f"sqlite:{data / 'bridge.db'}"
    config.write_text(yaml.safe_dump(edited, sort_keys=False))

    second = entry(data)
    assert second.returncode == 0, second.stderr
    assert "Generated tokens" in second.stdout
    written = yaml.safe_load(config.read_text())
    reg = yaml.safe_load(registration.read_text())
    assert EXAMPLE_SECRET not in config.read_text()
    assert reg["as_token"] == written["appservice"]["as_token"]
    assert reg["hs_token"] == written["appservice"]["hs_token"]
    assert reg["url"] == f"http://127.0.0.1:{port}"
    before = (config.read_text(), registration.read_text())

    # Third start: the bridge itself, which fails on the (closed) homeserver with its own
    # exit code; nothing is rewritten.
    third = entry(data)
    assert third.returncode == ExitCode.HOMESERVER_UNREACHABLE, third.stdout + third.stderr
    assert "Startup failed: Homeserver" in third.stderr
    assert (config.read_text(), registration.read_text()) == before

    # Arguments pass through to `python -m bridge`: `docker compose run bridge doctor`.
    doctor = entry(data, "doctor")
    assert doctor.returncode == 1, doctor.stdout
    assert re.search(r"^FAIL\s+homeserver\s", doctor.stdout, re.MULTILINE), doctor.stdout
    assert re.search(r"^ok\s+registration\s", doctor.stdout, re.MULTILINE), doctor.stdout


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.example.yml").read_text())


def test_compose_file_has_the_services_volumes_and_healthchecks() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {
        "synapse", "postgres", "redis", "bridge", "bridge-2", "facade-1", "facade-2", "lb"
    }  # fmt: skip
    assert set(compose["volumes"]) == {"bridge-data", "postgres-data", "synapse-data"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in ("bridge", "bridge-2", "facade-1", "facade-2"):
        service = services[name]
        assert "bridge-data:/data" in service["volumes"]
        assert "/health/ready" in " ".join(service["healthcheck"]["test"])
    # Synapse reads the registration the bridge wrote.
    assert "bridge-data:/bridge:ro" in services["synapse"]["volumes"]
    mounts = [v for service in services.values() for v in service.get("volumes", [])]
    for volume in ("postgres-data", "synapse-data"):
        assert any(v.startswith(volume + ":") for v in mounts)


def test_compose_roles_share_redis_and_database() -> None:
    services = _compose()["services"]
    names = ("bridge", "bridge-2", "facade-1", "facade-2")
    env = {name: services[name]["environment"] for name in names}
    # Two receiving processes: one receives, the other stands by (the receiver lock).
    for receiver in ("bridge", "bridge-2"):
        assert env[receiver]["BRIDGE_APPSERVICE__RECEIVE_TRANSACTIONS"] == "true"
    assert services["bridge-2"]["depends_on"]["bridge"]["condition"] == "service_healthy"
    for facade in ("facade-1", "facade-2"):
        assert env[facade]["BRIDGE_APPSERVICE__RECEIVE_TRANSACTIONS"] == "false"
        assert services[facade]["depends_on"]["bridge"]["condition"] == "service_healthy"
    redis_urls = {e["BRIDGE_REDIS__URL"] for e in env.values()}
    database_urls = {e["BRIDGE_DATABASE__URL"] for e in env.values()}
    assert redis_urls == {"redis://redis:6379/0"} and database_urls == {
        "postgres://bridge:bridge@postgres/bridge"
    }
    assert set(services["lb"]["depends_on"]) == set(names)


def test_load_balancer_is_sticky_and_proxies_websockets() -> None:
    lb = _compose()["services"]["lb"]
    mount = next(v for v in lb["volumes"] if "nginx" in v)
    conf = (ROOT / mount.split(":")[0]).read_text()
    upstream = re.search(r"upstream facades \{(.*?)\}", conf, re.DOTALL)
    assert upstream is not None
    assert "ip_hash;" in upstream.group(1)
    assert "facade-1:29340" in upstream.group(1) and "facade-2:29340" in upstream.group(1)
    socketio = re.search(r"location /socket.io/ \{(.*?)\}", conf, re.DOTALL)
    assert socketio is not None
    block = socketio.group(1)
    assert "proxy_http_version 1.1;" in block
    assert "proxy_set_header Upgrade $http_upgrade;" in block
    assert "proxy_set_header Connection $connection_upgrade;" in block
    admin = re.search(r"location /api/admin/ \{(.*?)\}", conf, re.DOTALL)
    assert admin is not None and "proxy_pass http://appservice;" in admin.group(1)


def test_load_balancer_sends_transactions_to_whichever_process_receives() -> None:
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    upstream = re.search(r"upstream receivers \{(.*?)\}", conf, re.DOTALL)
    assert upstream is not None
    servers = re.findall(r"server (\S+)", upstream.group(1))
    assert servers == ["bridge:29340", "bridge-2:29340"]
    # A standby's 503 is its normal answer: never counted as a failure.
    assert upstream.group(1).count("max_fails=0") == 2 and "ip_hash" not in upstream.group(1)
    app = re.search(r"location /_matrix/app/ \{(.*?)\}", conf, re.DOTALL)
    assert app is not None
    block = app.group(1)
    assert "proxy_pass http://receivers;" in block
    assert "proxy_next_upstream error timeout http_503 non_idempotent;" in block
    # The registration's url, as the compose file's comment says: the lb's port 29340.
    assert "listen 29340;" in conf
    compose = (ROOT / "docker-compose.example.yml").read_text()
    assert "appservice.address: http://lb:29340" in compose


def test_dockerfile_follows_bridge_conventions() -> None:
    text = (ROOT / "Dockerfile").read_text()
    final = text.split("\nFROM ")[-1]  # the runtime stage
    assert re.search(r"^USER 1337(:1337)?$", final, re.MULTILINE)
    assert re.search(r"^VOLUME /data$", final, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n?.*/health/ready", final, re.MULTILINE)
    assert 'ENTRYPOINT ["/usr/local/bin/docker-run.sh"]' in final
    assert "COPY docker-run.sh /usr/local/bin/docker-run.sh" in final
