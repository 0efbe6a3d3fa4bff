"""``python -m bridge dev``: a local Synapse (SQLite) and the bridge, state under .dev/."""

from __future__ import annotations

import argparse
import logging
import logging.config
import secrets
import signal
from pathlib import Path

from ..api.auth import VERIFIER
from ..app import BridgeServer, run_bridge
from ..config import Config
from ..logs import configure_logging
from ..registration import generate
from .demo_data import DemoSeeder
from .synapse import SynapseProcess
from .workers import SynapseWorkers, ensure_database

log = logging.getLogger("bridge.devstack")


def prepare_bridge_config(state: Path, synapse_port: int, bridge_port: int) -> Path:
    config_path = state / "config.yaml"
    registration_path = state / "registration.yaml"
    state.mkdir(parents=True, exist_ok=True)
    if not config_path.exists():
        generate(config_path, registration_path)
        config = Config.load(config_path, environ={})
        user = {
            **config.data,
            "homeserver": {
                **config["homeserver"],
                "address": f"http://127.0.0.1:{synapse_port}",
                "domain": "localhost",
            },
            "appservice": {
                **config["appservice"],
                "address": f"http://127.0.0.1:{bridge_port}",
                "port": bridge_port,
            },
            "database": {"url": f"sqlite:{state.resolve() / 'bridge.db'}", "args": {}},
        }
        Config(user, config_path).save()
        generate(config_path, registration_path)
    return config_path


async def run_dev(args: argparse.Namespace) -> int:
    state = Path(args.dir)
    config_path = prepare_bridge_config(state, args.synapse_port, args.bridge_port)
    config = Config.load(config_path)
    # The dev stack serves the reference web client with its password-less sign-in.
    demo = not getattr(args, "no_demo", False)
    config.set("demo.enabled", demo)
    config.set("demo.sign_in", demo)
    config.validate()
    configure_logging(config)
    synapse: SynapseProcess | SynapseWorkers
    if getattr(args, "synapse_workers", False):
        # Its own state directory: a homeserver on PostgreSQL, not the SQLite one's.
        database = await ensure_database(args.synapse_postgres, "bridge_dev_synapse")
        synapse = SynapseWorkers(
            state / "synapse-workers",
            port=args.synapse_port,
            database=database,
            registration_files=[state / "registration.yaml"],
        )
    else:
        synapse = SynapseProcess(
            state / "synapse",
            port=args.synapse_port,
            registration_files=[state / "registration.yaml"],
        )
    first_start = not synapse.config_path.exists()
    log.info("Starting Synapse on %s (state in %s)", synapse.url, synapse.data_dir)
    synapse.start()
    try:
        await synapse.wait_ready()
        password_file = state / "dev-user-password"
        if first_start or not password_file.exists():
            password = secrets.token_urlsafe(12)
            await synapse.register_user("dev", password, admin=True)
            password_file.write_text(password)
        bridge_url = f"http://127.0.0.1:{args.bridge_port}"

        async def started(server: BridgeServer) -> None:
            print(
                "\nDev stack is up:\n"
                f"  homeserver      {synapse.url}   (log in with Element as @dev:localhost, "
                f"password in {password_file})\n"
                f"  bridge          {bridge_url}\n"
                f"  REST facade     {bridge_url}/api\n"
                f"  admin API token {config_path} → admin_api.token\n"
                f"  dev JWT         python -m bridge -c {config_path} token <crmUserId>",
                flush=True,
            )
            if demo:
                await seed_demo(server, synapse, state, bridge_url)
            print("Press Ctrl-C to stop both.\n", flush=True)

        await run_bridge(config, started)
    finally:
        # Ctrl-C reaches Synapse too (same terminal); stop it cleanly either way.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        synapse.stop()
        log.info("Synapse stopped")
    return 0


async def seed_demo(
    server: BridgeServer, synapse: SynapseProcess | SynapseWorkers, state: Path, bridge_url: str
) -> None:
    """Push the demo directory (idempotent), then print where to open it."""
    seeder = DemoSeeder(
        bridge_url,
        str(server.config["admin_api.token"]),
        server.app[VERIFIER],
        synapse,
        state,
    )
    try:
        logins = await seeder.seed()
    except Exception as e:
        # The bridge still runs; the demo is a convenience on top of it.
        log.warning("Could not seed the demo data: %s", e)
        return
    print("\nDemo: open each link in its own browser window (or a private one)")
    for user, url in logins.links:
        print(f"  {user.name:<14} {user.role:<9} {url}")
    password = logins.matrix_password or "(unknown: remove .dev/ to start over)"
    print(
        f"  Element login of Alice's linked Matrix account:\n"
        f"    homeserver {synapse.url}\n"
        f"    user       {logins.matrix_user}\n"
        f"    password   {password}",
        flush=True,
    )
