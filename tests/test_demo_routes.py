"""The /demo page and its dev-only sign-in exist only when the config turns them on."""

from __future__ import annotations

import time

import aiohttp
import pytest

from bridge.api.auth import VERIFIER
from tests.api_support import api_for, crm_user, second_facade

pytestmark = pytest.mark.integration

DEMO_PATHS = ("/demo", "/demo/", "/demo/static/app.js", "/demo/static/socket.io.min.js")


async def _status(session: aiohttp.ClientSession, method: str, url: str, **kw) -> int:
    async with session.request(method, url, allow_redirects=False, **kw) as resp:
        await resp.read()
        return resp.status


async def test_off_by_default_every_demo_route_is_404(stack) -> None:
    assert stack.config["demo.enabled"] is False and stack.config["demo.sign_in"] is False
    async with aiohttp.ClientSession() as session:
        for path in DEMO_PATHS:
            assert await _status(session, "GET", stack.bridge_url + path) == 404, path
        token = stack.bridge_url + "/demo/token"
        assert await _status(session, "POST", token, json={"userId": "x"}) == 404
        async with session.get(stack.bridge_url + "/demo/users") as resp:
            assert resp.status == 404
            assert (await resp.json())["errcode"] == "M_UNRECOGNIZED"


async def test_page_without_sign_in_serves_files_but_mints_nothing(stack) -> None:
    user = await crm_user(stack.app, "Page Only")
    async with (
        second_facade(stack.config, **{"demo.enabled": True}) as facade,
        aiohttp.ClientSession() as session,
    ):
        base = facade.config["appservice.address"]
        async with session.get(base + "/demo?as=1", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/demo/?as=1"
        async with session.get(base + "/demo/") as resp:
            page = await resp.text()
            assert resp.status == 200 and resp.content_type == "text/html"
            assert 'src="static/app.js"' in page and 'src="static/socket.io.min.js"' in page
        async with session.get(base + "/demo/static/socket.io.min.js") as resp:
            # Vendored from npm with its licence header kept.
            assert resp.status == 200
            assert (await resp.text()).startswith("/*!\n * Socket.IO v4.8.4")
        async with session.get(base + "/demo/static/app.js") as resp:
            assert resp.status == 200 and "/api/chat/conversations" in await resp.text()
        async with session.get(base + "/demo/static/../../config.py") as resp:
            assert resp.status in (403, 404)
        body = {"userId": user.crm_user_id}
        assert await _status(session, "POST", base + "/demo/token", json=body) == 404
        assert await _status(session, "GET", base + "/demo/users") == 404


async def test_dev_sign_in_mints_a_short_lived_token_for_an_active_user(stack) -> None:
    user = await crm_user(stack.app, "Demo Signer")
    overrides = {"demo.enabled": True, "demo.sign_in": True, "demo.token_ttl": 600}
    async with (
        second_facade(stack.config, **overrides) as facade,
        aiohttp.ClientSession() as session,
    ):
        base = facade.config["appservice.address"]
        async with session.get(base + "/demo/users") as resp:
            listed = await resp.json()
            assert resp.status == 200
            assert {"_id": user.crm_user_id, "role": "employee"}.items() <= next(
                u for u in listed if u["_id"] == user.crm_user_id
            ).items()
        async with session.post(base + "/demo/token", json={"userId": user.crm_user_id}) as resp:
            minted = await resp.json()
            assert resp.status == 200 and minted["expiresIn"] == 600
        crm_user_id, expires = facade.app[VERIFIER].verify_session(minted["token"])
        leeway = float(facade.config["auth.leeway"])
        assert crm_user_id == user.crm_user_id
        assert 590 < expires - leeway - time.time() <= 600
        async with session.get(
            base + "/api/auth/me", headers={"Authorization": f"Bearer {minted['token']}"}
        ) as resp:
            assert resp.status == 200 and (await resp.json())["_id"] == user.crm_user_id
        # Bad input: the usual JSON errors.
        async with session.post(base + "/demo/token", json={"userId": "nobody-here"}) as resp:
            assert resp.status == 404 and (await resp.json())["errcode"] == "M_NOT_FOUND"
        async with session.post(base + "/demo/token", json={}) as resp:
            assert resp.status == 400 and (await resp.json())["errcode"] == "M_INVALID_PARAM"
        async with session.post(base + "/demo/token", data=b"{") as resp:
            assert resp.status == 400 and (await resp.json())["errcode"] == "M_NOT_JSON"
    # The session's bridge (option off) still knows nothing of it.
    async with api_for(stack.app, stack.bridge_url, user) as api:
        status, _, _ = await api.post("/demo/token", {"userId": user.crm_user_id})
        assert status == 404
