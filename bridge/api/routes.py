"""Wires the facade into the app: service, rate limiter, routes, CORS and event handlers."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp_cors
from aiohttp import web
from redis.asyncio import Redis

from ..chat.service import CHAT
from ..config import redis_prefix
from ..context import CONFIG
from ..matrix.relations import ensure as ensure_relations
from ..metrics import METRICS
from . import (
    dm_levels,
    openapi,
    project_chats,
    routes_chat,
    routes_directory,
    routes_relations,
    uploads,
)
from .auth import SEEN_USERS, VERIFIER, JwtVerifier
from .direct import DM_LOCKS
from .online import Online
from .plumbing import RATE_LIMITER
from .ratelimit import RateLimiter

log = logging.getLogger("bridge.api")

API_PREFIX = "/api/"
# Served by the directory side, not by this facade.
FOREIGN_PREFIXES = ("/api/admin/",)


def setup(app: web.Application) -> None:
    config = app[CONFIG]
    ensure_relations(app)
    app[VERIFIER] = JwtVerifier.from_config(config)
    app[DM_LOCKS] = {}
    app[SEEN_USERS] = {}
    limits = config["api.rate_limit"]
    app[RATE_LIMITER] = RateLimiter(
        int(limits["requests"]),
        float(limits["window_seconds"]),
        int(limits["send_requests"]),
        prefix=f"{redis_prefix(config)}:rl",
        retry_seconds=float(limits.get("redis_retry_seconds", 5)),
    )
    if (metrics := app.get(METRICS)) is not None:
        app[RATE_LIMITER].on_limited = metrics.rate_limit_hit

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        url = config.get("redis.url")
        redis = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) if url else None
        app[RATE_LIMITER].redis = redis
        yield
        app[RATE_LIMITER].redis = None
        if redis is not None:
            with contextlib.suppress(Exception):
                await redis.aclose()

    app.cleanup_ctx.append(redis_ctx)
    routes_directory.setup(app)
    project_chats.setup(app)
    dm_levels.setup(app)
    if CHAT in app:
        app[CHAT].online = Online(app)
    registered = [
        *app.router.add_routes(routes_chat.routes),
        *app.router.add_routes(routes_relations.routes),
        *app.router.add_routes(uploads.routes),
        *app.router.add_routes(openapi.routes),
    ]
    registered += [
        r for r in app.router.routes() if r.resource and str(r.resource.canonical) in (
            "/api/users", "/api/projects", "/api/auth/me"
        )
    ]  # fmt: skip
    origins = [str(o) for o in config.get("api.cors_origins") or []]
    if origins:
        cors = aiohttp_cors.setup(
            app,
            defaults={
                origin: aiohttp_cors.ResourceOptions(
                    allow_credentials=True,
                    expose_headers=(
                        "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
                        "Retry-After",
                    ),
                    allow_headers=("Authorization", "Content-Type"),
                    max_age=600,
                )
                for origin in origins
            },
        )  # fmt: skip
        for route in registered:
            cors.add(route)
