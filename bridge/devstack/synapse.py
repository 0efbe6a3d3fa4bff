"""A local Synapse for development and tests: generated config, registration wired in.

Used by ``python -m bridge dev`` and by the test suite. It runs ``matrix-synapse`` from the
same virtualenv as a child process bound to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import hashlib
import hmac
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

log = logging.getLogger("bridge.devstack.synapse")

# Generous limits for the normal (non-appservice) users that tests and developers drive.
_RC_OPEN = {"per_second": 1000, "burst_count": 1000}
RATE_LIMITS: dict[str, Any] = {
    "rc_message": _RC_OPEN,
    "rc_registration": _RC_OPEN,
    "rc_room_creation": _RC_OPEN,
    "rc_login": {"address": _RC_OPEN, "account": _RC_OPEN, "failed_attempts": _RC_OPEN},
    "rc_joins": {"local": _RC_OPEN, "remote": _RC_OPEN},
    "rc_joins_per_room": _RC_OPEN,
    "rc_invites": {"per_room": _RC_OPEN, "per_user": _RC_OPEN, "per_issuer": _RC_OPEN},
    "rc_presence": {"per_user": _RC_OPEN},
    "rc_3pid_validation": _RC_OPEN,
    "rc_admin_redaction": _RC_OPEN,
}


def _die_with_parent() -> None:
    """Runs in the child before exec: if the bridge, a test or a benchmark is killed, Synapse
    gets SIGTERM instead of living on as an orphan (Linux only; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SynapseProcess:
    def __init__(
        self,
        data_dir: Path,
        *,
        port: int,
        server_name: str = "localhost",
        registration_files: list[Path] | None = None,
        database: dict[str, Any] | None = None,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.server_name = server_name
        self.registration_files = [p.resolve() for p in registration_files or []]
        self.database = database
        self.extra_config = extra_config or {}
        self.config_path = self.data_dir / "homeserver.yaml"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        """Generate the config once, then (re)write the parts we own on every start."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "synapse.app.homeserver",
                    "--server-name",
                    self.server_name,
                    "--config-path",
                    str(self.config_path),
                    "--data-directory",
                    str(self.data_dir),
                    "--generate-config",
                    "--report-stats=no",
                ],
                cwd=self.data_dir,
                check=True,
                capture_output=True,
            )
        config = yaml.safe_load(self.config_path.read_text())
        config.update(
            listeners=[
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            trusted_key_servers=[],
            suppress_key_server_warning=True,
            enable_registration=False,
            app_service_config_files=[str(p) for p in self.registration_files],
            presence={"enabled": True},
            url_preview_enabled=False,
            # MSC3874: history pages leave edits and thread replies out of /messages
            # (bridge/api/history.py); docs/operator-guide.md recommends it.
            experimental_features={"msc3874_enabled": True},
            **RATE_LIMITS,
        )
        if self.database:
            config["database"] = self.database
        config.update(self.extra_config)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        # Quieter logs: warnings only, to a file under the data dir.
        log_config = self.data_dir / f"{self.server_name}.log.config"
        if log_config.exists():
            text = log_config.read_text().replace("level: INFO", "level: WARNING")
            log_config.write_text(text)

    @property
    def shared_secret(self) -> str:
        return yaml.safe_load(self.config_path.read_text())["registration_shared_secret"]

    def start(self) -> None:
        self.prepare()
        self.log_file = open(self.data_dir / "synapse.stdout.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "synapse.app.homeserver",
                "--config-path",
                str(self.config_path),
            ],
            cwd=self.data_dir,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process and self.process.poll() is not None:
                    raise RuntimeError(
                        f"Synapse exited with {self.process.returncode}; see "
                        f"{self.data_dir / 'synapse.stdout.log'}"
                    )
                try:
                    async with session.get(f"{self.url}/_matrix/client/versions") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError(f"Synapse did not answer within {timeout:.0f}s")

    def stop(self, timeout: float = 15.0) -> None:
        if not self.process or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        # A paused (SIGSTOPped) Synapse only acts on the SIGTERM once it runs again.
        os.killpg(self.process.pid, signal.SIGCONT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log_file.close()

    def pids(self) -> dict[str, int]:
        """The process's pid by role (one role here; SynapseWorkers has several)."""
        return {"synapse": self.process.pid} if self.process else {}

    def pause(self) -> None:
        """SIGSTOP: the process stays, its sockets stay open, nothing answers (a stall)."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)

    async def restart(self) -> None:
        self.stop()
        self.start()
        await self.wait_ready()

    async def register_user(
        self, localpart: str, password: str, admin: bool = False
    ) -> dict[str, Any]:
        """Create a normal user through the shared-secret admin API; returns the login."""
        url = f"{self.url}/_synapse/admin/v1/register"
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as resp:
                nonce = (await resp.json())["nonce"]
            role = "admin" if admin else "notadmin"
            # The MAC covers the fields joined by NULs, without a trailing one.
            mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
            mac.update(b"\x00".join(p.encode() for p in (nonce, localpart, password, role)))
            body = {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            }
            async with session.post(url, json=body) as resp:
                data = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"register {localpart} failed: {resp.status} {data}")
                return data
