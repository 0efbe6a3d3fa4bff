"""The reference web client at ``/demo``, and the dev stack's sign-in for it.

The page is static files (no build step) that talk to the public REST and Socket.IO API
exactly as a CRM frontend would. It is served only when ``demo.enabled`` is on. The
sign-in routes, which mint a token for any CRM user without a password, exist only when
``demo.sign_in`` is on as well, which ``python -m bridge dev`` does and nothing else.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..context import CONFIG

log = logging.getLogger("bridge.demo")


def setup(app: web.Application) -> None:
    config = app[CONFIG]
    if not config.get("demo.enabled"):
        return
    from . import routes

    routes.add_page(app)
    if config.get("demo.sign_in"):
        log.warning(
            "Demo sign-in is on: anyone reaching this port from loopback can act as any CRM "
            "user. Never turn demo.sign_in on outside a local dev stack."
        )
        app.add_routes(routes.sign_in)
