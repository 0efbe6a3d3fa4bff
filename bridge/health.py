"""Liveness and readiness probes for orchestrators and load balancers."""

from __future__ import annotations

from aiohttp import web

from .context import READY

routes = web.RouteTableDef()


@routes.get("/health/live")
@routes.get("/_matrix/mau/live")
async def live(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/health/ready")
@routes.get("/_matrix/mau/ready")
async def ready(request: web.Request) -> web.Response:
    state = request.app[READY]
    ok = all(state.values()) and bool(state)
    return web.json_response(
        {"status": "ok" if ok else "starting", "checks": state}, status=200 if ok else 503
    )
