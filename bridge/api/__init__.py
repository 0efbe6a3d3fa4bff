"""The api side of the bridge."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Attach this side's routes, event handlers and background tasks to the app."""
