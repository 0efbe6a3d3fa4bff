"""`python -m bridge -g`: fresh tokens into the config, and a registration for the homeserver."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import yaml

from .config import EXAMPLE_SECRET, Config
from .ids import IdMapper

# Config keys that -g fills in, by the YAML key that holds them.
_GENERATED = {
    "as_token": "appservice.as_token",
    "hs_token": "appservice.hs_token",
    "token": "admin_api.token",
    "secret": "auth.secret",
}


def new_token() -> str:
    return secrets.token_urlsafe(48)


def build_registration(config: Config) -> dict[str, Any]:
    ids = IdMapper.from_config(config)
    return {
        "id": config["appservice.id"],
        "url": config["appservice.address"],
        "as_token": config["appservice.as_token"],
        "hs_token": config["appservice.hs_token"],
        "sender_localpart": config["appservice.bot_username"],
        "rate_limited": False,
        "receive_ephemeral": True,
        # Older Synapse releases only know the MSC2409 name.
        "de.sorunome.msc2409.push_ephemeral": True,
        "namespaces": {
            "users": [{"exclusive": True, "regex": ids.user_namespace_regex()}],
            "aliases": [{"exclusive": True, "regex": ids.alias_namespace_regex()}],
            "rooms": [],
        },
    }


def _fill_secrets_in_text(text: str, values: dict[str, str]) -> tuple[str, set[str]]:
    """Replace example placeholders line by line, so the user's comments survive."""
    filled: set[str] = set()
    pattern = re.compile(
        r'^(?P<indent>\s*)(?P<key>as_token|hs_token|token|secret):\s*"?'
        + re.escape(EXAMPLE_SECRET)
        + r'"?\s*$',
        re.MULTILINE,
    )

    def replace(match: re.Match[str]) -> str:
        key = match.group("key")
        filled.add(_GENERATED[key])
        return f'{match.group("indent")}{key}: "{values[_GENERATED[key]]}"'

    return pattern.sub(replace, text), filled


def generate(config_path: Path, registration_path: Path) -> dict[str, Any]:
    """Write fresh secrets into config_path (creating it from the example) and the registration."""
    if config_path.exists():
        text = config_path.read_text("utf-8")
    else:
        from importlib import resources

        text = resources.files("bridge").joinpath("example-config.yaml").read_text("utf-8")
    values = {path: new_token() for path in _GENERATED.values()}
    text, filled = _fill_secrets_in_text(text, values)
    config_path.write_text(text, "utf-8")
    missing = {path: value for path, value in values.items() if path not in filled}
    config = Config.load(config_path, environ={})
    if missing:
        # The user's file had no placeholder line for these: set them in the data instead.
        user = yaml.safe_load(config_path.read_text("utf-8")) or {}
        for path, value in missing.items():
            *parents, last = path.split(".")
            node = user
            for part in parents:
                node = node.setdefault(part, {})
            if node.get(last) in (None, "", EXAMPLE_SECRET):
                node[last] = value
        config_path.write_text(yaml.safe_dump(user, sort_keys=False), "utf-8")
        config = Config.load(config_path, environ={})
    registration = build_registration(config)
    registration_path.write_text(yaml.safe_dump(registration, sort_keys=False), "utf-8")
    return registration
