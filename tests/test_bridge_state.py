"""Beeper's bridge-state endpoint, asked with the hs_token as the homeserver would."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from bridge.context import READY
from tests.api_support import crm_user, second_facade
from tests.helpers import eventually

PATH = "/_matrix/app/com.beeper.bridge_state"


async def ask(base: str, headers: dict[str, str] | None = None, **params: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(base + PATH, headers=headers or {}, params=params) as resp,
    ):
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.integration
async def test_bridge_state_needs_the_hs_token(stack) -> None:
    status, body = await ask(stack.bridge_url)
    assert status == 401 and body["errcode"] == "M_UNAUTHORIZED", body
    assert body["message"] == body["error"]
    as_token = stack.config["appservice.as_token"]
    for headers, params in (
        (bearer(as_token), {}),  # the other token of the registration is not this one
        (bearer(stack.config["appservice.hs_token"] + "x"), {}),
        ({}, {"access_token": "wrong"}),
    ):
        status, body = await ask(stack.bridge_url, headers, **params)
        assert status == 403 and body["errcode"] == "M_FORBIDDEN", body


@pytest.mark.integration
async def test_bridge_state_reports_running_and_the_user(stack) -> None:
    hs_token = stack.config["appservice.hs_token"]
    status, body = await ask(stack.bridge_url, bearer(hs_token))
    assert status == 200, body
    state = body["bridgeState"]
    assert state["state_event"] == "RUNNING" and "error" not in state
    assert state["source"] == "bridge" and state["ttl"] > 0
    assert abs(state["timestamp"] - time.time()) < 60
    assert state["info"]["checks"] == {"database": True, "homeserver": True}
    assert state["info"]["redis"] is True and state["info"]["degraded"] is False
    assert body["remoteState"] == {}

    # The deprecated query parameter works too; a CRM user's puppet has a remote state.
    user = await crm_user(stack.app, "State User")
    status, body = await ask(stack.bridge_url, access_token=hs_token, user_id=user.mxid)
    assert status == 200, body
    assert body["remoteState"] == {
        user.crm_user_id: {
            "state_event": "CONNECTED",
            "user_id": user.mxid,
            "remote_id": user.crm_user_id,
            "remote_name": "State User",
            "timestamp": body["remoteState"][user.crm_user_id]["timestamp"],
            "ttl": 21600,
            "source": "bridge",
        }
    }
    _, body = await ask(stack.bridge_url, bearer(hs_token), user_id="@nobody:localhost")
    assert body["remoteState"] == {}


@pytest.mark.integration
async def test_bridge_state_follows_redis_and_the_homeserver(stack) -> None:
    hs_token = stack.config["appservice.hs_token"]
    # Nothing listens on port 1: the facade runs, degraded.
    overrides = {"redis.url": "redis://127.0.0.1:1/0", "homeserver.probe_interval": 3600}
    async with second_facade(stack.config, **overrides) as facade:
        base = stack.config["appservice.address"].rsplit(":", 1)[0]
        url = f"{base}:{facade.config['appservice.port']}"

        async def degraded() -> dict[str, Any] | None:
            _, body = await ask(url, bearer(hs_token))
            return body if body["bridgeState"].get("error") else None

        body = await eventually(degraded, timeout=20)
        state = body["bridgeState"]
        assert state["state_event"] == "RUNNING"
        assert state["error"] == "crm-redis-unavailable"
        assert state["info"]["redis"] is False and state["info"]["degraded"] is True
        # The homeserver counted down (the flag the monitor sets: no probe for an hour).
        facade.app[READY]["homeserver"] = False
        status, body = await ask(url, bearer(hs_token))
        assert status == 200
        state = body["bridgeState"]
        assert state["state_event"] == "UNKNOWN_ERROR"
        assert state["error"] == "crm-homeserver-unreachable"
        assert state["info"]["checks"]["homeserver"] is False
