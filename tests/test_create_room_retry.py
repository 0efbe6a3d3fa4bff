"""createRoom is retried only when the request never reached the homeserver.

A proxy in front of the session's Synapse forwards every request; for createRoom it then
holds the answer past the client's timeout, or drops the connection. Synapse made the room
either way: a retry would make a second one. A refused connection, which never reached
Synapse, is retried. A DM whose createRoom ended that way is found again by the next
request instead of being created twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.context import MATRIX
from bridge.devstack.synapse import free_port
from bridge.errors import HomeserverUnavailable
from bridge.matrix.client import MatrixClient
from bridge.matrix.homeserver import Homeserver
from tests.api_support import api_for, crm_user, second_facade

pytestmark = pytest.mark.integration

_HOP = {"host", "content-length", "transfer-encoding", "connection"}


class Proxy:
    """Forwards to Synapse; ``mode`` says what happens to createRoom's answer."""

    def __init__(self, upstream: str, port: int | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = port or free_port()
        self.mode = "pass"  # "pass", "hold" (answer after ``hold`` s) or "drop"
        self.hold = 3.0
        self.create_rooms = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        body = await request.read()
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, self.upstream + request.path_qs, data=body, headers=headers
            ) as resp,
        ):
            data, status = await resp.read(), resp.status
            kind = resp.headers.get("Content-Type", "application/json")
        if request.path.endswith("/createRoom"):
            self.create_rooms += 1
            if self.mode == "hold":
                await asyncio.sleep(self.hold)
            elif self.mode == "drop":
                assert request.transport is not None
                request.transport.close()
        return web.Response(body=data, status=status, headers={"Content-Type": kind})

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Proxy]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        try:
            yield self
        finally:
            await runner.cleanup()


def client_through(stack: Any, url: str, timeout: float) -> tuple[MatrixClient, Homeserver]:
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout, connect=1))
    hs = Homeserver(url, stack.config["appservice.as_token"], session, retry_budget=10)
    return MatrixClient(hs, stack.config["appservice.id"], stack.app[MATRIX].bot_mxid), hs


async def test_create_room_is_not_retried_after_a_timeout(stack) -> None:
    app = stack.app
    creator = await crm_user(app, "Creator")
    async with Proxy(stack.config["homeserver.address"]).running() as proxy:
        proxy.mode = "hold"
        matrix, hs = client_through(stack, proxy.url, timeout=1.0)
        try:
            with pytest.raises(HomeserverUnavailable):
                await matrix.create_room({"preset": "private_chat"}, as_user=creator.mxid)
            # Let a retry, if there were one, reach Synapse.
            await asyncio.sleep(1.0)
        finally:
            await hs.session.close()
        assert proxy.create_rooms == 1 and hs.not_retried == 1
    # Synapse made the room once; a retry would have made a second one.
    assert len(await app[MATRIX].joined_rooms(creator.mxid)) == 1


async def test_create_room_is_not_retried_after_a_dropped_connection(stack) -> None:
    app = stack.app
    creator = await crm_user(app, "Creator")
    async with Proxy(stack.config["homeserver.address"]).running() as proxy:
        proxy.mode = "drop"
        matrix, hs = client_through(stack, proxy.url, timeout=10.0)
        try:
            with pytest.raises(HomeserverUnavailable):
                await matrix.create_room({"preset": "private_chat"}, as_user=creator.mxid)
        finally:
            await hs.session.close()
        assert proxy.create_rooms == 1
    assert len(await app[MATRIX].joined_rooms(creator.mxid)) == 1


async def test_create_room_is_retried_when_the_connection_was_refused(stack) -> None:
    app = stack.app
    creator = await crm_user(app, "Creator")
    proxy = Proxy(stack.config["homeserver.address"])
    matrix, hs = client_through(stack, proxy.url, timeout=10.0)
    try:
        # Nothing listens yet: refused, never sent, so retried until the proxy is up.
        attempt = asyncio.create_task(
            matrix.create_room({"preset": "private_chat"}, as_user=creator.mxid)
        )
        await asyncio.sleep(0.6)
        assert not attempt.done()
        async with proxy.running():
            room_id = await asyncio.wait_for(attempt, timeout=10)
    finally:
        await hs.session.close()
    assert proxy.create_rooms == 1
    assert await app[MATRIX].joined_rooms(creator.mxid) == [room_id]


async def test_a_dm_whose_create_room_was_cut_off_is_found_not_made_twice(stack) -> None:
    app = stack.app
    alice, bob = await asyncio.gather(crm_user(app, "Alice Cut"), crm_user(app, "Bob Cut"))
    async with Proxy(stack.config["homeserver.address"]).running() as proxy:
        proxy.mode = "drop"
        async with second_facade(stack.config, **{"homeserver.address": proxy.url}) as facade:
            url = f"http://127.0.0.1:{facade.config['appservice.port']}"
            async with api_for(app, url, alice) as a:
                status, error, _ = await a.post(
                    "/api/chat/direct/create", {"userId": bob.crm_user_id}
                )
            assert status == 503 and error["errcode"] == "M_HOMESERVER_UNAVAILABLE", error
    assert proxy.create_rooms == 1
    made = await app[MATRIX].joined_rooms(alice.mxid)
    assert len(made) == 1
    # The next request (any process) takes the claim over and finds that room.
    async with api_for(app, stack.bridge_url, bob) as b:
        status, created, _ = await b.post("/api/chat/direct/create", {"userId": alice.crm_user_id})
    assert status == 201, created
    assert created["matrixRoomId"] == made[0]
    assert await app[MATRIX].joined_rooms(alice.mxid) == made
    assert await app[MATRIX].joined_rooms(bob.mxid) == made
