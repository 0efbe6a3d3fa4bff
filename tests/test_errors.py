"""The one error middleware: every failure becomes {"message", "errcode"} with the right status."""

from __future__ import annotations

import asyncpg
import pytest
from aiohttp import web

from bridge.errors import NotFound, error_middleware
from bridge.matrix.homeserver import MatrixError


@pytest.mark.parametrize(
    ("error", "status", "errcode"),
    [
        (NotFound("Conversation not found"), 404, "M_NOT_FOUND"),
        # Homeserver refusals nobody handled keep their 4xx and errcode...
        (MatrixError(413, "M_TOO_LARGE", "event too large"), 413, "M_TOO_LARGE"),
        (MatrixError(403, "M_FORBIDDEN", "not allowed"), 403, "M_FORBIDDEN"),
        # ...but a homeserver fault, or our as_token refused, is the bridge's problem: 503.
        (MatrixError(500, "M_UNKNOWN", "boom"), 503, "M_HOMESERVER_UNAVAILABLE"),
        (MatrixError(401, "M_UNKNOWN_TOKEN", "bad as_token"), 503, "M_HOMESERVER_UNAVAILABLE"),
        # The database restarting or unreachable: retry shortly (503), not a bridge bug.
        (asyncpg.ConnectionDoesNotExistError("closed mid-operation"), 503, "M_SERVICE_UNAVAILABLE"),
        (asyncpg.CannotConnectNowError("starting up"), 503, "M_SERVICE_UNAVAILABLE"),
        (asyncpg.AdminShutdownError("terminating"), 503, "M_SERVICE_UNAVAILABLE"),
        (ConnectionRefusedError(111, "Connect call failed"), 503, "M_SERVICE_UNAVAILABLE"),
        (asyncpg.TooManyConnectionsError("sorry, too many clients"), 503, "M_SERVICE_UNAVAILABLE"),
        (asyncpg.InterfaceError("connection is closed"), 503, "M_SERVICE_UNAVAILABLE"),
        (
            asyncpg.InternalClientError(
                "cannot switch to state 12; another operation (2) is in progress"
            ),
            503,
            "M_SERVICE_UNAVAILABLE",
        ),
        (RuntimeError("secret detail"), 500, "M_UNKNOWN"),
    ],
)
async def test_errors_are_rendered_in_one_shape(
    aiohttp_client, error: Exception, status: int, errcode: str
) -> None:
    async def fail(_: web.Request) -> web.Response:
        raise error

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/api/x", fail)
    client = await aiohttp_client(app)
    resp = await client.get("/api/x")
    body = await resp.json()
    assert resp.status == status
    assert body["errcode"] == errcode
    assert isinstance(body["message"], str) and body["message"]
    assert "secret detail" not in body["message"]


async def test_unknown_route_and_method(aiohttp_client) -> None:
    async def ok(_: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/api/x", ok)
    client = await aiohttp_client(app)
    resp = await client.get("/api/nope")
    assert resp.status == 404 and (await resp.json())["errcode"] == "M_UNRECOGNIZED"
    resp = await client.post("/api/x")
    assert resp.status == 405 and "not allowed" in (await resp.json())["message"]
