"""The reverse proxy in front of a worker-mode Synapse (bridge/devstack/workers.py).

It does what nginx does in a deployment: each request goes to the process that serves its
path, by the regular expressions of Synapse's worker documentation (docs/workers.md,
``synapse.app.generic_worker`` and "Stream writers"), everything else to the main process.
It runs as a process of its own (``python -m bridge.devstack.router routes.json``), so its
CPU is measured apart from the bridge's and Synapse's.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

_C = r"^/_matrix/client/(api/v1|r0|v3|unstable)"
_C3 = r"^/_matrix/client/(r0|v3|unstable)"

# What a generic worker serves, as docs/workers.md lists it (client side only: the test
# homeserver has no federation listener). Events are created here and persisted by the
# event persister; /messages may go to one worker as long as a room's pages all go there.
GENERIC_WORKER: tuple[str, ...] = (
    # Sync
    r"^/_matrix/client/(r0|v3)/sync$",
    r"^/_matrix/client/(api/v1|r0|v3)/events$",
    r"^/_matrix/client/(api/v1|r0|v3)/initialSync$",
    r"^/_matrix/client/(api/v1|r0|v3)/rooms/[^/]+/initialSync$",
    # Client API
    _C + r"/createRoom$",
    _C + r"/publicRooms$",
    _C + r"/rooms/.*/joined_members$",
    _C + r"/rooms/.*/context/.*$",
    _C + r"/rooms/.*/members$",
    _C + r"/rooms/.*/state$",
    r"^/_matrix/client/v1/rooms/.*/hierarchy$",
    r"^/_matrix/client/(v1|unstable)/rooms/.*/relations/",
    r"^/_matrix/client/v1/rooms/.*/threads$",
    r"^/_matrix/client/v1/room_summary/.*$",
    _C3 + r"/account/3pid$",
    _C3 + r"/account/whoami$",
    _C3 + r"/account/deactivate$",
    r"^/_matrix/client/(r0|v3)/delete_devices$",
    _C + r"/devices(/|$)",
    r"^/_matrix/client/versions$",
    _C + r"/voip/turnServer$",
    _C + r"/rooms/.*/event/",
    _C + r"/joined_rooms$",
    r"^/_matrix/client/v1/rooms/.*/timestamp_to_event$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable/.*)/rooms/.*/aliases",
    _C + r"/search$",
    _C3 + r"/user/.*/filter(/|$)",
    _C + r"/directory/room/.*$",
    _C3 + r"/capabilities$",
    _C3 + r"/notifications$",
    r"^/_synapse/admin/v1/rooms/[^/]+$",
    # Encryption
    _C3 + r"/keys/query$",
    _C3 + r"/keys/changes$",
    _C3 + r"/keys/claim$",
    _C3 + r"/room_keys/",
    _C3 + r"/keys/upload",
    # Registration and login
    _C + r"/login$",
    _C3 + r"/register$",
    _C3 + r"/register/available$",
    r"^/_matrix/client/v1/register/m.login.registration_token/validity$",
    _C3 + r"/password_policy$",
    # Event sending
    _C + r"/rooms/.*/redact",
    _C + r"/rooms/.*/send",
    _C + r"/rooms/.*/state/",
    _C + r"/rooms/.*/(join|invite|leave|ban|unban|kick)$",
    _C + r"/join/",
    _C + r"/knock/",
    _C + r"/profile/",
    _C3 + r"/user_directory/search$",
    # Pagination: every room's pages go to this one worker.
    _C + r"/rooms/.*/messages$",
    # Stream writers (this worker writes typing, receipts and presence).
    _C + r"/rooms/.*/typing",
    _C3 + r"/rooms/.*/receipt",
    _C3 + r"/rooms/.*/read_markers",
    _C + r"/presence/",
    # Media (the worker's listener serves the media resource too).
    r"^/_matrix/media/",
    r"^/_matrix/client/v1/media/",
)

# GET only, per docs/workers.md ("Additionally, the following REST endpoints can be handled
# for GET requests").
GENERIC_WORKER_GET: tuple[str, ...] = (
    _C + r"/pushrules/",
    _C3 + r"/.*/tags",
    _C3 + r"/.*/account_data",
    r"^/_synapse/admin/v2/users/[^/]+$",
)

# Not in Synapse's table: the appservice ping. Its handler, after the ping, hurries the
# appservice's recoverer in the process it runs in, and with notify_appservices_from_worker
# the recoverers live in the appservice sender: answered by main, a ping hurries nothing
# (docs/architecture.md, "Synapse with workers").
APPSERVICE_SENDER: tuple[str, ...] = (r"^/_matrix/client/v1/appservice/[^/]+/ping$",)


# Reads that a deployment may serve from a client reader apart from the event creator, so a
# read right after a send can reach a process that has not replicated it yet (with
# ``readers``; every room's /messages still go to the one reader).
READS: tuple[str, ...] = (
    _C + r"/rooms/.*/messages$",
    _C + r"/rooms/.*/context/.*$",
    r"^/_matrix/client/(v1|unstable)/rooms/.*/relations/",
    r"^/_matrix/client/v1/rooms/.*/threads$",
    _C + r"/rooms/.*/joined_members$",
    _C + r"/rooms/.*/members$",
    _C + r"/rooms/.*/state$",
    _C + r"/rooms/.*/event/",
    _C + r"/search$",
)
READS_GET: tuple[str, ...] = (_C + r"/rooms/.*/state/",)


@dataclass(frozen=True)
class Route:
    pattern: re.Pattern[str]
    target: str
    get_only: bool = False


def routes(generic: str, appservice: str, reader: str | None = None) -> list[Route]:
    reads = []
    if reader:
        reads = [Route(re.compile(p), reader) for p in READS]
        reads += [Route(re.compile(p), reader, get_only=True) for p in READS_GET]
    return [
        *(Route(re.compile(p), appservice) for p in APPSERVICE_SENDER),
        *reads,
        *(Route(re.compile(p), generic) for p in GENERIC_WORKER),
        *(Route(re.compile(p), generic, get_only=True) for p in GENERIC_WORKER_GET),
    ]


def choose(table: list[Route], main: str, method: str, path: str) -> str:
    for route in table:
        if route.get_only and method != "GET":
            continue
        if route.pattern.search(path):
            return route.target
    return main


# Hop-by-hop headers (RFC 9110 7.6.1) and the ones aiohttp recomputes.
_DROP = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Transfer-Encoding", "TE", "Trailer", "Upgrade",
              "Proxy-Authorization", "Proxy-Authenticate", "Host", "Content-Length",
              "Content-Encoding")
)  # fmt: skip

SESSION = web.AppKey("session", aiohttp.ClientSession)


UPSTREAM_HEADER = "X-Devstack-Upstream"


def build_app(
    main: str, generic: str, appservice: str, reader: str | None = None
) -> web.Application:
    table = routes(generic, appservice, reader)
    names = {main: "main", generic: "generic", appservice: "appservice"}
    if reader:
        names[reader] = "reader"

    async def proxy(request: web.Request) -> web.StreamResponse:
        target = choose(table, main, request.method, request.path)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
        body = await request.read()
        async with request.app[SESSION].request(
            request.method,
            target + request.rel_url.raw_path_qs,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
            auto_decompress=False,
        ) as upstream:
            payload = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROP}
            if "Content-Encoding" in upstream.headers:
                out["Content-Encoding"] = upstream.headers["Content-Encoding"]
            # Which process answered, for tests that check the routing.
            out[UPSTREAM_HEADER] = names.get(target, target)
            return web.Response(status=upstream.status, body=payload, headers=out)

    async def session_ctx(app: web.Application):
        # Long polls (/sync, /events) hold a request for their timeout: no total limit here.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
        ) as session:
            app[SESSION] = session
            yield

    app = web.Application(client_max_size=200 * 1024 * 1024)
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main(argv: list[str]) -> None:
    """``python -m bridge.devstack.router routes.json``: {"port", "main", "generic",
    "appservice", "reader" (optional)}: URLs of each process's client listener."""
    spec = json.loads(Path(argv[0]).read_text())
    app = build_app(spec["main"], spec["generic"], spec["appservice"], spec.get("reader"))
    asyncio.run(_serve(app, spec["port"]))


async def _serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
