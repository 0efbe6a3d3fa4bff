from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bridge.config import EXAMPLE_SECRET, Config, ConfigError
from bridge.registration import generate


def test_user_file_is_merged_into_example(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"homeserver": {"domain": "example.org"}}))
    config = Config.load(path, environ={})
    assert config["homeserver.domain"] == "example.org"
    # Everything else keeps the shipped default.
    assert config["homeserver.address"] == "http://127.0.0.1:8008"
    assert config["power_levels.manager"] == 50


def test_environment_overrides_values_with_yaml_types(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("{}")
    config = Config.load(
        path,
        environ={
            "BRIDGE_HOMESERVER__DOMAIN": "env.example",
            "BRIDGE_APPSERVICE__PORT": "4242",
            "BRIDGE_API__CORS_ORIGINS": "[https://crm.example]",
            "UNRELATED": "x",
        },
    )
    assert config["homeserver.domain"] == "env.example"
    assert config["appservice.port"] == 4242
    assert config["api.cors_origins"] == ["https://crm.example"]


def test_example_secrets_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("{}")
    config = Config.load(path, environ={})
    with pytest.raises(ConfigError) as err:
        config.validate()
    message = str(err.value)
    assert "appservice.as_token" in message and "python -m bridge -g" in message


def test_alg_none_is_refused(tmp_path: Path) -> None:
    config_path = tmp_path / "config.yaml"
    generate(config_path, tmp_path / "registration.yaml")
    config = Config.load(config_path, environ={"BRIDGE_AUTH__ALGORITHMS": "[HS256, none]"})
    with pytest.raises(ConfigError, match="none"):
        config.validate()


def test_missing_and_broken_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        Config.load(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("homeserver: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.load(broken)


def test_generate_writes_tokens_and_registration(tmp_path: Path) -> None:
    config_path, registration_path = tmp_path / "config.yaml", tmp_path / "registration.yaml"
    registration = generate(config_path, registration_path)
    config = Config.load(config_path, environ={})
    config.validate()
    # Comments of the example survive in the written config.
    assert "# Where the bridge reaches the homeserver" in config_path.read_text()
    assert EXAMPLE_SECRET not in config_path.read_text()
    assert registration == yaml.safe_load(registration_path.read_text())
    assert registration["as_token"] == config["appservice.as_token"]
    assert registration["hs_token"] == config["appservice.hs_token"]
    assert registration["as_token"] != registration["hs_token"]
    assert registration["rate_limited"] is False
    assert registration["receive_ephemeral"] is True
    assert registration["namespaces"]["users"] == [
        {"exclusive": True, "regex": "@crm_.+:localhost"}
    ]
    assert registration["namespaces"]["aliases"] == [
        {"exclusive": True, "regex": "#crm_.+:localhost"}
    ]
    # A second run keeps the tokens, so a registered homeserver keeps working.
    again = generate(config_path, registration_path)
    assert again["as_token"] == registration["as_token"]


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_every_hmac_algorithm_needs_a_real_secret(tmp_path: Path, algorithm: str) -> None:
    config_path = tmp_path / "config.yaml"
    generate(config_path, tmp_path / "registration.yaml")
    environ = {"BRIDGE_AUTH__ALGORITHMS": f"[{algorithm}]", "BRIDGE_AUTH__SECRET": EXAMPLE_SECRET}
    config = Config.load(config_path, environ=environ)
    with pytest.raises(ConfigError, match=f"auth.secret .*{algorithm}"):
        config.validate()
