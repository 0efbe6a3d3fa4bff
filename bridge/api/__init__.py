"""The REST facade for the CRM frontend: the seed's /api routes, served from Matrix."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Attach this side's routes and background tasks to the app."""
    from . import routes

    routes.setup(app)
