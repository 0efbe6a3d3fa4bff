"""Beeper's bridge-state endpoint: ``POST /_matrix/app/com.beeper.bridge_state``.

The homeserver (or Beeper's tooling) asks, with the hs_token, how the bridge is doing; the
answer has mautrix's ``GlobalBridgeState`` shape (``mautrix/util/bridge_state.py``):
``{"bridgeState": {...}, "remoteState": {...}}``. The global state comes from the same facts
as readiness (health.py): the database, the homeserver, Redis. With ``?user_id=`` naming a
CRM user's puppet or linked Matrix account, ``remoteState`` holds that user's CRM account.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .context import USERS
from .health import facts
from .matrix.intake import check_hs_token

routes = web.RouteTableDef()

# Errors reported while the bridge runs: a short code a dashboard can switch on.
_DOWN = (
    ("database", "crm-database-unavailable", "The bridge cannot reach its database"),
    ("homeserver", "crm-homeserver-unreachable", "The bridge cannot reach the homeserver"),
)
_OK_TTL, _ERROR_TTL = 21600, 3600  # mautrix's defaults, in seconds


def global_state(app: web.Application) -> dict[str, Any]:
    health = facts(app)
    state: dict[str, Any] = {"state_event": "RUNNING", "ttl": _OK_TTL}
    for check, error, message in _DOWN:
        if health["checks"].get(check) is False:
            state = {"state_event": "UNKNOWN_ERROR", "ttl": _ERROR_TTL, "error": error,
                     "message": message}  # fmt: skip
            break
    else:
        if not health["checks"]:
            state = {"state_event": "STARTING", "ttl": _ERROR_TTL}
        elif health["degraded"]:
            # Still bridging: only fan-out across processes and shared rate limits suffer.
            state["error"] = "crm-redis-unavailable"
            state["message"] = "Redis is unreachable; each process works on its own"
    info = {key: health[key] for key in ("role", "checks", "redis", "degraded")}
    return {**state, "timestamp": int(time.time()), "source": "bridge", "info": info}


async def _remote_state(app: web.Application, mxid: str) -> dict[str, Any]:
    if USERS not in app or not mxid:
        return {}
    user = await app[USERS].get_by_mxid(mxid)
    if user is None:
        return {}
    remote = {
        "state_event": "CONNECTED" if user.active else "LOGGED_OUT",
        "user_id": mxid,
        "remote_id": user.crm_user_id,
        "remote_name": user.name,
        "timestamp": int(time.time()),
        "ttl": _OK_TTL if user.active else _ERROR_TTL,
        "source": "bridge",
    }
    return {user.crm_user_id: remote}


@routes.post("/_matrix/app/com.beeper.bridge_state")
async def bridge_state(request: web.Request) -> web.Response:
    check_hs_token(request)
    remote = await _remote_state(request.app, request.query.get("user_id", ""))
    return web.json_response({"bridgeState": global_state(request.app), "remoteState": remote})
