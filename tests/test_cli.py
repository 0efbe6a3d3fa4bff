"""The process as an operator runs it: exit codes and clean starts and stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bridge.devstack.synapse import free_port
from bridge.startup import ExitCode

from .conftest import generate_config


def run_bridge(args: list[str], env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_missing_config_exits_with_config_code(tmp_path: Path) -> None:
    result = run_bridge(["-c", str(tmp_path / "absent.yaml")])
    assert result.returncode == ExitCode.CONFIG
    assert "not found" in result.stderr


def test_example_secrets_exit_with_config_code(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("homeserver: {domain: example.org}\n")
    result = run_bridge(["-c", str(config)])
    assert result.returncode == ExitCode.CONFIG
    assert "example value" in result.stderr


def test_unreachable_homeserver_exit_code(tmp_path: Path) -> None:
    config, _ = generate_config(
        tmp_path,
        **{
            "homeserver.address": f"http://127.0.0.1:{free_port()}",
            "homeserver.retry_budget": 1,
            "database.url": f"sqlite:{tmp_path / 'b.db'}",
            "appservice.port": free_port(),
        },
    )
    result = run_bridge(["-c", str(config)])
    assert result.returncode == ExitCode.HOMESERVER_UNREACHABLE, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Startup failed: Homeserver")


@pytest.mark.integration
def test_rejected_as_token_exit_code(tmp_path: Path, synapse_and_config) -> None:
    synapse, _ = synapse_and_config
    config, _ = generate_config(
        tmp_path,
        **{
            "homeserver.address": synapse.url,
            "database.url": f"sqlite:{tmp_path / 'b.db'}",
            "appservice.port": free_port(),
        },
    )
    result = run_bridge(["-c", str(config)])
    assert result.returncode == ExitCode.AS_TOKEN_REJECTED, result.stderr
    assert "as_token" in result.stderr.strip().splitlines()[-1]


@pytest.mark.integration
def test_dev_stack_starts_pings_and_stops_cleanly(tmp_path: Path) -> None:
    """`python -m bridge dev` (what `make run` runs): up, pinged, and no orphans on Ctrl-C."""
    synapse_port, bridge_port = free_port(), free_port()
    state = tmp_path / "dev"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridge",
            "dev",
            "--dir",
            str(state),
            "--synapse-port",
            str(synapse_port),
            "--bridge-port",
            str(bridge_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Appservice ping succeeded" in line:
                break
        assert any("Dev stack is up" in line for line in output), "".join(output)
        assert any("Appservice ping succeeded" in line for line in output), "".join(output)
        config = yaml.safe_load((state / "config.yaml").read_text())
        assert config["database"]["url"].startswith("sqlite:")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    pid_file = state / "synapse" / "homeserver.pid"
    # Synapse is gone: its port no longer accepts connections and no process is left.
    leftover = subprocess.run(["pgrep", "-f", str(state / "synapse")], capture_output=True)
    assert leftover.returncode == 1, leftover.stdout
    assert not pid_file.exists() or not _alive(int(pid_file.read_text() or 0))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError):
        return False
    return True
