"""Configuration: the user's file merged into the shipped example, then env overrides."""

from __future__ import annotations

import copy
import hashlib
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

EXAMPLE_SECRET = "This value is generated when generating the registration"
ENV_PREFIX = "BRIDGE_"
# Values that must be replaced before the bridge may start.
SECRET_PATHS = ("appservice.as_token", "appservice.hs_token", "admin_api.token")


class ConfigError(Exception):
    """The configuration is missing, malformed or still holds example values."""


def load_example() -> dict[str, Any]:
    text = resources.files("bridge").joinpath("example-config.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "logging":
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _apply_env(data: dict[str, Any], environ: dict[str, str]) -> None:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Environment variable {name} points inside a non-section")
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else None


@dataclass
class Config:
    """Merged configuration with dotted-path access (``config["homeserver.domain"]``)."""

    data: dict[str, Any]
    path: Path | None = None

    @classmethod
    def load(cls, path: str | os.PathLike | None, environ: dict[str, str] | None = None) -> Config:
        user: dict[str, Any] = {}
        if path is not None:
            file = Path(path)
            if not file.exists():
                raise ConfigError(
                    f"Config file {file} not found; copy config.example.yaml to start from"
                )
            try:
                user = yaml.safe_load(file.read_text("utf-8")) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"Config file {file} is not valid YAML: {e}") from e
            if not isinstance(user, dict):
                raise ConfigError(f"Config file {file} must hold a mapping at the top level")
        data = _merge(load_example(), user)
        _apply_env(data, dict(os.environ if environ is None else environ))
        return cls(data, Path(path) if path is not None else None)

    def __getitem__(self, dotted: str) -> Any:
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(dotted)
            node = node[part]
        return node

    def get(self, dotted: str, default: Any = None) -> Any:
        try:
            return self[dotted]
        except KeyError:
            return default

    def set(self, dotted: str, value: Any) -> None:
        *parents, last = dotted.split(".")
        node = self.data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    def validate(self) -> None:
        """Refuse example secrets and obviously broken values, with one clear message."""
        problems = [
            f"{key} still holds the example value"
            for key in SECRET_PATHS
            if self.get(key) in (None, "", EXAMPLE_SECRET)
        ]
        algorithms = self.get("auth.algorithms") or []
        if any(str(alg).lower() == "none" for alg in algorithms):
            problems.append("auth.algorithms must not contain 'none'")
        hmac_algorithms = [a for a in algorithms if str(a).upper().startswith("HS")]
        if hmac_algorithms and self.get("auth.secret") in (None, "", EXAMPLE_SECRET):
            problems.append(
                f"auth.secret still holds the example value ({', '.join(hmac_algorithms)} "
                "is enabled)"
            )
        if not re.fullmatch(r"[a-z0-9._=/-]+", str(self.get("appservice.bot_username", ""))):
            problems.append("appservice.bot_username must be a valid Matrix localpart")
        for template, field in (
            ("bridge.username_template", "{userid}"),
            ("bridge.alias_template", "{projectid}"),
        ):
            if field not in str(self.get(template, "")):
                problems.append(f"{template} must contain {field}")
        if problems:
            hint = " (run `python -m bridge -g -c <config> -r <registration>` to generate secrets)"
            raise ConfigError("; ".join(problems) + hint)

    def save(self, path: str | os.PathLike | None = None) -> None:
        target = Path(path or self.path or "config.yaml")
        target.write_text(yaml.safe_dump(self.data, sort_keys=False, allow_unicode=True), "utf-8")

    # Shortcuts used all over the bridge.
    @property
    def domain(self) -> str:
        return self["homeserver.domain"]

    @property
    def bot_mxid(self) -> str:
        return f"@{self['appservice.bot_username']}:{self.domain}"


def redis_prefix(config: Config) -> str:
    """Redis keys and channels of this deployment (rate limits, real-time state, fan-out):
    configured, or derived from its registration, so two deployments on one Redis never mix."""
    configured = config.get("realtime.redis_prefix")
    if configured:
        return str(configured)
    seed = f"{config['appservice.id']}\x1f{config['appservice.hs_token']}".encode()
    return f"crm-bridge:{hashlib.sha256(seed).hexdigest()[:12]}"
