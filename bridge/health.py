"""Liveness and readiness probes for orchestrators and load balancers.

Readiness is the database and the homeserver. Redis is reported but does not gate it: a
process whose Redis is away keeps serving its own sockets and REST (bridge/redis_state.py),
so it answers 200 with ``"status": "degraded"`` and ``"redis": false``. Taking it out of the
load balancer would turn a partial outage (no cross-process fan-out) into a full one.
A process that may have missed body invalidations, or could not publish its own
(chat/invalidation.py), is degraded too until its subscription is back.

``role`` says what this process does with the homeserver's transactions
(matrix/receiver.py): ``receiver`` (holds the receiver lock), ``standby`` (configured to
receive, waiting for the lock; ``/_matrix/app`` answers 503) or ``facade`` (not configured
to receive). A standby is ready: it serves REST and Socket.IO like any facade.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .api.ratelimit import RATE_LIMITER
from .chat.invalidation import BUS
from .context import READY, RECEIVER, REDIS_STATE
from .realtime.service import SIO

routes = web.RouteTableDef()


@routes.get("/health/live")
@routes.get("/_matrix/mau/live")
async def live(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def facts(app: web.Application) -> dict[str, Any]:
    """What readiness and the bridge state both report: the checks, Redis, degradation."""
    state = app[READY]
    ok = all(state.values()) and bool(state)
    redis = app.get(REDIS_STATE)
    redis_up = None if redis is None else redis.up
    limiter = app.get(RATE_LIMITER)
    # The rate limiter notices a Redis outage on its own (api/ratelimit.py): it says so too,
    # and so does the body cache's invalidation bus (chat/invalidation.py).
    # A database error made the Socket.IO listener drop another process's event lately
    # (realtime/manager.py): its clients were told to resync.
    sio = app.get(SIO)
    listener_ok = not bool(getattr(sio.manager, "degraded", False)) if sio is not None else True
    bus = app.get(BUS)
    degraded = (
        redis_up is False
        or bool(limiter and limiter.degraded)
        or not listener_ok
        or bool(getattr(bus, "degraded", False))
    )
    status = "starting" if not ok else "degraded" if degraded else "ok"
    receiver = app.get(RECEIVER)
    return {
        "status": status,
        "role": None if receiver is None else str(receiver.role),
        "checks": dict(state),
        "redis": redis_up,
        "listener": listener_ok,
        "degraded": degraded,
    }


@routes.get("/health/ready")
@routes.get("/_matrix/mau/ready")
async def ready(request: web.Request) -> web.Response:
    if (limiter := request.app.get(RATE_LIMITER)) is not None:
        await limiter.probe()  # a limiter that lost Redis looks again, rather than wait
    body = facts(request.app)
    return web.json_response(body, status=503 if body["status"] == "starting" else 200)
