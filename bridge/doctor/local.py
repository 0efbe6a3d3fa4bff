"""Checks that need nothing but this machine: the config, the registration file, the
database and Redis."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import yaml
from mautrix.util.async_db import Database, UpgradeTable
from yarl import URL

from ..config import Config, ConfigError
from ..db import owner_of, schema_version
from ..db.upgrade import upgrade_table
from ..registration import build_registration
from .report import Finding, fail, ok, warn

REGENERATE = (
    "run `python -m bridge -g -c {config} -r {registration}` (it keeps the config's tokens), "
    "give the registration to the homeserver and restart it"
)
# Fields of registration.yaml the homeserver acts on, and the config key behind each.
_COMPARED = {
    "id": "appservice.id",
    "url": "appservice.address",
    "as_token": "appservice.as_token",
    "hs_token": "appservice.hs_token",
    "sender_localpart": "appservice.bot_username",
    "namespaces": "bridge.username_template / bridge.alias_template",
}
TIMEOUT = 10.0


def check_config(path: str) -> tuple[Config | None, Finding]:
    """Loads and validates; a config that loads but fails validation is still returned."""
    try:
        config = Config.load(path)
    except ConfigError as e:
        return None, fail("config", str(e), "copy config.example.yaml to start from, then -g")
    try:
        config.validate()
    except ConfigError as e:
        return config, fail("config", str(e).split(" (run ")[0], "run `python -m bridge -g`")
    return config, ok("config", f"{path} loads and validates")


def check_registration_file(config: Config, config_path: str, path: str) -> Finding:
    """registration.yaml as written by -g from this config: anything else is stale."""
    file = Path(path)
    fix = REGENERATE.format(config=config_path, registration=path)
    if not file.exists():
        return warn(
            "registration", f"{path} not found here, so only the homeserver's copy is checked"
        )
    try:
        found = yaml.safe_load(file.read_text("utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        return fail("registration", f"{path} cannot be read: {e}", fix)
    if not isinstance(found, dict):
        return fail("registration", f"{path} does not hold a mapping", fix)
    expected = build_registration(config)
    stale = [
        f"{key} (config: {source})"
        for key, source in _COMPARED.items()
        if _normalise(found.get(key)) != _normalise(expected[key])
    ]
    if not found.get("receive_ephemeral") and not found.get("de.sorunome.msc2409.push_ephemeral"):
        stale.append("receive_ephemeral (typing, receipts and presence would never arrive)")
    if stale:
        return fail("registration", f"{path} is stale: {', '.join(stale)} differ", fix)
    return ok("registration", f"{path} matches the config")


def _normalise(value: Any) -> Any:
    return yaml.safe_dump(value, sort_keys=True) if isinstance(value, dict | list) else value


def _sqlite_absent(url: str) -> Finding | None:
    """Opening a missing SQLite file would create it: say what the bridge will do instead."""
    db_path = URL(url).path
    if os.path.exists(db_path):
        return None
    parent = os.path.dirname(os.path.abspath(db_path))
    if not os.access(parent, os.W_OK):
        return fail(
            "database",
            f"SQLite file {db_path} does not exist and {parent} is not writable",
            "point database.url at a writable place (in Docker: /data)",
        )
    return ok("database", f"SQLite file {db_path} is created on the bridge's first start")


async def check_database(config: Config) -> Finding:
    """Opens the database without migrating it and compares its schema version with ours."""
    url = str(config["database.url"])
    latest = len(upgrade_table.upgrades)
    if url.startswith("sqlite:") and (absent := await asyncio.to_thread(_sqlite_absent, url)):
        return absent
    # No upgrade table and no owner: the doctor reads, it never creates or migrates.
    db = Database.create(
        url, upgrade_table=UpgradeTable(), db_args=dict(config.get("database.args") or {}),
        ignore_foreign_tables=False,
    )  # fmt: skip
    try:
        await asyncio.wait_for(db.start(), TIMEOUT)
    except Exception as e:
        return fail(
            "database",
            f"cannot open {_safe(url)}: {type(e).__name__}: {e}",
            "check database.url (host, port, credentials) and that the database server runs",
        )
    try:
        return await _schema(db, latest)
    finally:
        await db.stop()


async def _schema(db: Database, latest: int) -> Finding:
    if await db.table_exists("database_owner"):
        owner = await owner_of(db)
        if owner and owner != "crm-bridge":
            return fail(
                "database", f"the database belongs to {owner}", "give the bridge its own database"
            )
    if not await db.table_exists(upgrade_table.version_table_name):
        return ok("database", f"opens; empty, the bridge creates its v{latest} schema on start")
    version = await schema_version(db, upgrade_table.version_table_name)
    if version > latest:
        return fail(
            "database",
            f"schema v{version} is newer than this bridge knows (v{latest})",
            "run the bridge version that migrated it, or restore the backup taken before",
        )
    if version < latest:
        return warn(
            "database",
            f"schema v{version}; the bridge applies {latest - version} migration(s) to "
            f"v{latest} on its next start",
            "back up the database first (docs/operator-guide.md)",
        )
    return ok("database", f"opens; schema v{version} is current")


async def check_redis(config: Config) -> Finding:
    url = config.get("redis.url")
    if not url:
        return ok("redis", "not configured (single process: fan-out stays in memory)")
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(str(url), socket_connect_timeout=3, socket_timeout=3)
    try:
        await asyncio.wait_for(client.ping(), TIMEOUT)
    except Exception as e:
        return fail(
            "redis",
            f"{_safe(str(url))} does not answer PING: {type(e).__name__}: {e}",
            "start Redis or correct redis.url (set it to null for a single process)",
        )
    finally:
        await client.aclose()
    return ok("redis", f"{_safe(str(url))} answers")


def _safe(url: str) -> str:
    """A URL without its password, for printing."""
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else url
