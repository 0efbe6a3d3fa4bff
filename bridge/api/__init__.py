"""The REST facade for the CRM frontend: the seed's /api routes, served from Matrix."""

from __future__ import annotations

from aiohttp import web

from .chat import ChatService

# The chat service (conversations, history, send, receipts), shared with the realtime side.
CHAT = web.AppKey("chat", ChatService)


def setup(app: web.Application) -> None:
    """Attach this side's routes, event handlers and background tasks to the app."""
    from . import routes

    routes.setup(app)
