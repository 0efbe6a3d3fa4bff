"""Logs: JSON lines on request, and no secret in them, whatever the format.

A bridge process of its own logs everything at DEBUG (the access log included) while real
traffic passes with every kind of credential: admin calls with the admin token, REST sends
with a JWT, sockets with the token in ``auth`` and in the query string, transactions with
the hs_token (Synapse's in the header, one of ours in ``?access_token=``), and failed logins.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import socketio

from bridge.logs import JsonFormatter, redact_query
from tests.conftest import unique
from tests.fault_support import FaultStack, fault_stack
from tests.realtime_support import Recorder, conversation_of

DEBUG_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"},
        "json": {"()": "bridge.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    # Every logger of every library, aiohttp.access included, at DEBUG.
    "loggers": {name: {"level": "DEBUG"} for name in ("bridge", "mau", "aiohttp.access")},
    "root": {"level": "DEBUG", "handlers": ["console"]},
}


def test_json_formatter_writes_one_object_per_line() -> None:
    record = logging.makeLogRecord(
        {"name": "bridge.x", "levelno": logging.INFO, "levelname": "INFO",
         "msg": "sent %s\nsecond line", "args": ("it",), "room": "!r:hs"}
    )  # fmt: skip
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "INFO" and entry["logger"] == "bridge.x"
    assert entry["message"] == "sent it\nsecond line" and entry["room"] == "!r:hs"
    assert entry["time"].endswith("+00:00")
    assert set(entry) == {"time", "level", "logger", "message", "room"}


def test_query_tokens_are_redacted() -> None:
    query = "EIO=4&transport=polling&token=abc.def.ghi&access_token=hs&t=x"
    assert redact_query(query) == (
        "EIO=4&transport=polling&token=<redacted>&access_token=<redacted>&t=x"
    )


async def restart_with(fs: FaultStack, formatter: str) -> int:
    """Restart the bridge logging everything with ``formatter``; where its log starts."""
    fs.bridge.stop()
    logging_config = copy.deepcopy(DEBUG_LOGGING)
    logging_config["handlers"]["console"]["formatter"] = formatter
    fs.config.set("logging", logging_config)
    fs.config.save(fs.bridge.path)
    offset = fs.bridge.log_path.stat().st_size
    await fs.bridge.start()
    return offset


async def traffic(fs: FaultStack) -> list[str]:
    """Every door with its credential; returns the credentials used (valid or not)."""
    alice = await fs.directory.user("Alice Logs")
    bob = await fs.directory.user("Bob Logs")
    project = await fs.directory.project(unique("p"), "Logs", [alice, bob], alice)
    cid = conversation_of(project)
    alice_jwt, bob_jwt = fs.token(alice), fs.token(bob)
    claims = {"sub": alice, "exp": int(time.time()) + 600}
    forged = jwt.encode(claims, "not-the-secret-but-as-long-as-one-" * 2)
    expired = jwt.encode(
        {"sub": alice, "exp": int(time.time()) - 3600}, fs.config["auth.secret"], "HS256"
    )
    async with aiohttp.ClientSession() as session:
        # A send with a JWT, then failed logins: forged, expired, wrong admin token.
        auth = {"Authorization": f"Bearer {alice_jwt}"}
        body = {"conversationId": cid, "content": "logged?"}
        async with session.post(fs.url + "/api/chat/send", json=body, headers=auth) as resp:
            assert resp.status == 201
        for bad in (forged, expired):
            headers = {"Authorization": f"Bearer {bad}"}
            async with session.get(fs.url + "/api/auth/me", headers=headers) as resp:
                assert resp.status == 401
        admin = f"{fs.url}/api/admin/v1/users/{alice}"
        async with session.get(admin, headers={"Authorization": "Bearer wrong-admin"}) as resp:
            assert resp.status in (401, 403)
        # Media links carry the JWT in the query string (an <img> sends no header).
        media = f"{fs.url}/api/chat/media/localhost/nothing"
        async with session.get(media, params={"token": alice_jwt}) as resp:
            assert resp.status == 404
        # A transaction with the hs_token in the deprecated query parameter.
        txn = f"{fs.url}/_matrix/app/v1/transactions/{unique('log')}"
        params = {"access_token": fs.config["appservice.hs_token"]}
        async with session.put(txn, json={"events": []}, params=params) as resp:
            assert resp.status == 200
    # Sockets: the token in auth, and in the query string. (Websockets: a long-polling
    # client takes up to a ping interval to close.)
    a = await Recorder("alice").connect(fs.url, alice_jwt)
    b = await Recorder("bob").connect(fs.url, bob_jwt, query=True)
    try:
        await a.call("send_message", {"conversationId": cid, "content": "over the socket"})
        await b.wait("new_message", lambda m: m["content"] == "over the socket")
    finally:
        await a.close()
        await b.close()
    refused = Recorder("forged")
    try:
        await refused.connect(fs.url, forged)
        raise AssertionError("a forged token connected")
    except socketio.exceptions.ConnectionError:
        pass  # refused, as it should be
    finally:
        await refused.close()
    return [alice_jwt, bob_jwt, forged, expired]


def secrets_of(fs: FaultStack, tokens: list[str]) -> dict[str, str]:
    found = {
        "as_token": fs.config["appservice.as_token"],
        "hs_token": fs.config["appservice.hs_token"],
        "admin token": fs.config["admin_api.token"],
        "JWT secret": fs.config["auth.secret"],
    }
    for i, token in enumerate(tokens):
        found[f"JWT {i}"] = token
        found[f"JWT {i} signature"] = token.rsplit(".", 1)[1]
    return found


async def test_no_secret_in_text_or_json_logs(tmp_path: Path) -> None:
    async with fault_stack(tmp_path, redis=None) as fs:
        for formatter in ("plain", "json"):
            offset = await restart_with(fs, formatter)
            tokens = await traffic(fs)
            fs.bridge.stop()  # flushes everything, shutdown lines included
            text = fs.bridge.log_path.read_bytes()[offset:].decode()
            for name, secret in secrets_of(fs, tokens).items():
                assert secret not in text, f"{name} appears in the {formatter} logs"
            lines = [line for line in text.splitlines() if line.strip()]
            assert len(lines) > 30 and "DEBUG" in text, text  # DEBUG really was on
            # The access log ran, and showed the query strings without their tokens.
            assert "token=<redacted>" in text and "access_token=<redacted>" in text
            if formatter == "json":
                entries = [json.loads(line) for line in lines]
                assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
                access = [e for e in entries if e["logger"] == "aiohttp.access"]
                assert access and all(isinstance(e["status"], int) for e in access)
                assert any(e["level"] == "DEBUG" for e in entries)
