"""``/demo``: the static page, and (dev stack only) ``/demo/users`` and ``/demo/token``."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from aiohttp import web

from ..api.auth import verifier
from ..chat.serialize import user_object
from ..context import CONFIG, USERS
from ..errors import BridgeError, InvalidParam, NotFound, read_json

STATIC = Path(__file__).with_name("static")
# The sign-in lists at most this many users: enough for a demo directory.
_LISTED_USERS = 200

sign_in = web.RouteTableDef()


async def _index(request: web.Request) -> web.StreamResponse:
    response = web.FileResponse(STATIC / "index.html")
    # The page is tiny; always revalidate so an upgraded bridge serves the new one.
    response.headers["Cache-Control"] = "no-cache"
    return response


async def _to_index(request: web.Request) -> web.StreamResponse:
    # Relative URLs in the page (static/app.js) resolve against /demo/, not /.
    raise web.HTTPFound(request.rel_url.with_path("/demo/").with_query(request.query))


def add_page(app: web.Application) -> None:
    app.router.add_get("/demo", _to_index)
    app.router.add_get("/demo/", _index)
    app.router.add_static("/demo/static", STATIC, append_version=False)


def _require_loopback(request: web.Request) -> None:
    """A second fence: even misconfigured, the sign-in never answers another machine."""
    try:
        local = ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        local = False
    if not local:
        raise NotFound("No such endpoint", errcode="M_UNRECOGNIZED")


@sign_in.get("/demo/users")
async def list_users(request: web.Request) -> web.Response:
    _require_loopback(request)
    users = await request.app[USERS].all(active_only=True)
    users.sort(key=lambda u: (u.name.lower(), u.crm_user_id))
    return web.json_response([{**user_object(u), "role": u.role} for u in users[:_LISTED_USERS]])


@sign_in.post("/demo/token")
async def mint_token(request: web.Request) -> web.Response:
    """``{userId}`` → ``{token, expiresIn, user}``: a short-lived JWT for that CRM user."""
    _require_loopback(request)
    body = await read_json(request)
    crm_user_id = body.get("userId") if isinstance(body, dict) else None
    if not isinstance(crm_user_id, str | int) or isinstance(crm_user_id, bool) or crm_user_id == "":
        raise InvalidParam("userId is required: the CRM id of the user to sign in as")
    user = await request.app[USERS].get(str(crm_user_id))
    if user is None or not user.active:
        raise NotFound("No such active CRM user")
    ttl = int(request.app[CONFIG].get("demo.token_ttl") or 3600)
    try:
        token = verifier(request.app).mint(user.crm_user_id, ttl)
    except ValueError as e:
        raise BridgeError(f"Cannot mint a demo token: {e}") from e
    return web.json_response({"token": token, "expiresIn": ttl, "user": user_object(user)})
