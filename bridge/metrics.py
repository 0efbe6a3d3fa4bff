"""Prometheus metrics (opt-in): one registry per app, served on a port of its own.

The registry lives in the app (``METRICS``), not in prometheus_client's global default, so
several apps in one process (tests, a facade beside the bridge) never share counters. With
``metrics.enabled: false`` nothing is created and every hook is a ``None`` check.

Label values are bounded: routes and homeserver endpoints are templates
(``/api/chat/messages/{conversationId}``), never raw paths with ids; methods and event
types outside known sets count as ``other``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from .config import Config
from .context import CONFIG
from .errors import Handler
from .matrix.homeserver import endpoint_of
from .startup import ExitCode, StartupError

log = logging.getLogger("bridge.metrics")

_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
_EVENT_TYPES = frozenset((
    "m.room.message", "m.room.member", "m.room.redaction", "m.reaction", "m.sticker",
    "m.room.name", "m.room.topic", "m.room.avatar", "m.room.power_levels", "m.room.create",
    "m.room.join_rules", "m.room.history_visibility", "m.room.guest_access",
    "m.room.canonical_alias", "m.room.encrypted", "m.room.encryption", "m.room.pinned_events",
    "m.room.tombstone", "m.typing", "m.receipt", "m.presence", "com.crm.project",
))  # fmt: skip
# Socket.IO's long polls and websockets last as long as the client stays: counted, not timed.
_SOCKETIO = "/socket.io/"
UNMATCHED = "unmatched"

# Reconciliation actions by the applied summary's keys (crm/plan.py summarize).
_USER_ACTIONS = {"create": "user_create", "rename": "user_rename", "avatar": "user_avatar",
                 "deactivate": "user_deactivate"}  # fmt: skip
_ROOM_ACTIONS = {"create": "room_create", "rename": "room_rename", "topic": "room_topic",
                 "link": "room_link", "archive": "room_archive"}  # fmt: skip
_MEMBER_ACTIONS = ("invite", "join", "kick", "leave")


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.transactions = Counter(
            "bridge_appservice_transactions", "Appservice transactions received (hs_token valid)",
            registry=r,
        )  # fmt: skip
        self.transactions_failed = Counter(
            "bridge_appservice_transactions_failed",
            "Appservice transactions answered with an error (the homeserver retries them)",
            ["reason"], registry=r,
        )  # fmt: skip
        self.events = Counter(
            "bridge_appservice_events", "Events handled from appservice transactions",
            ["kind", "type"], registry=r,
        )  # fmt: skip
        self.http_requests = Counter(
            "bridge_http_requests", "HTTP requests served, by route template and status",
            ["method", "route", "status"], registry=r,
        )  # fmt: skip
        self.http_latency = Histogram(
            "bridge_http_request_duration_seconds", "Time to answer an HTTP request",
            ["method", "route"], registry=r,
        )  # fmt: skip
        self.sockets = Gauge(
            "bridge_sockets_connected", "Authenticated Socket.IO connections in this process",
            registry=r,
        )  # fmt: skip
        self.reconcile_actions = Counter(
            "bridge_reconcile_actions", "Directory reconciliation steps applied",
            ["action"], registry=r,
        )  # fmt: skip
        self.homeserver_latency = Histogram(
            "bridge_homeserver_request_duration_seconds",
            "Time for the homeserver to answer one request (each retry counts)",
            ["method", "endpoint"], registry=r,
        )  # fmt: skip
        self.homeserver_errors = Counter(
            "bridge_homeserver_errors",
            "Homeserver requests that failed: the HTTP status, or timeout / connection",
            ["method", "endpoint", "reason"], registry=r,
        )  # fmt: skip
        self.rate_limited = Counter(
            "bridge_rate_limited", "Requests refused by the facade's rate limiter (429)",
            ["route"], registry=r,
        )  # fmt: skip
        # Where the metrics listener is bound (the port may have been 0: any free one).
        self.address: tuple[str, int] | None = None

    # Hooks called by the rest of the bridge ---------------------------------------------

    def transaction_failed(self, reason: str) -> None:
        self.transactions_failed.labels(reason).inc()

    def count_events(self, timeline: Iterable[Mapping[str, Any]], ephemeral: Iterable[Any]) -> None:
        for kind, events in (("timeline", timeline), ("ephemeral", ephemeral)):
            for event in events:
                event_type = event.get("type")
                known = event_type if event_type in _EVENT_TYPES else "other"
                self.events.labels(kind, known).inc()

    def homeserver_answered(self, method: str, path: str, status: int, seconds: float) -> None:
        endpoint = endpoint_of(path)
        self.homeserver_latency.labels(method, endpoint).observe(seconds)
        if status >= 400:
            self.homeserver_errors.labels(method, endpoint, str(status)).inc()

    def homeserver_failed(self, method: str, path: str, reason: str) -> None:
        self.homeserver_errors.labels(method, endpoint_of(path), reason).inc()

    def rate_limit_hit(self, route: str) -> None:
        self.rate_limited.labels(route).inc()

    def count_reconcile(self, applied: Mapping[str, Any]) -> None:
        counts: dict[str, int] = {}
        for key, action in _USER_ACTIONS.items():
            counts[action] = len(applied["users"].get(key, ()))
        for key, action in _ROOM_ACTIONS.items():
            counts[action] = len(applied["projects"].get(key, ()))
        for action in _MEMBER_ACTIONS:
            counts[action] = len(applied.get(action, ()))
        counts["power_levels"] = len(applied.get("powerLevels", ()))
        for action, n in counts.items():
            if n:
                self.reconcile_actions.labels(action).inc(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


@web.middleware
async def http_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: sees the status the error middleware rendered."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away before the answer
        raise
    finally:
        metrics = request.app[METRICS]
        method = request.method if request.method in _METHODS else "other"
        route = route_of(request)
        metrics.http_requests.labels(method, route, str(status)).inc()
        if route != _SOCKETIO:
            metrics.http_latency.labels(method, route).observe(time.perf_counter() - started)


def middlewares(config: Config) -> list[Any]:
    return [http_middleware] if config.get("metrics.enabled") else []


def setup(app: web.Application) -> None:
    """Create the registry and serve it on ``metrics.listen_address:listen_port``."""
    config = app[CONFIG]
    if not config.get("metrics.enabled"):
        return
    metrics = app[METRICS] = Metrics()

    async def scrape(_: web.Request) -> web.Response:
        headers = {"Content-Type": CONTENT_TYPE_LATEST}
        return web.Response(body=metrics.exposition(), headers=headers)

    async def serve(app: web.Application) -> AsyncIterator[None]:
        host = str(config.get("metrics.listen_address") or "127.0.0.1")
        port = int(config.get("metrics.listen_port") or 0)
        exporter = web.Application()
        exporter.router.add_get("/metrics", scrape)
        runner = web.AppRunner(exporter, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as e:
            await runner.cleanup()
            raise StartupError(
                ExitCode.PORT_IN_USE, f"Cannot serve metrics on {host}:{port}: {e}"
            ) from e
        bound = runner.addresses[0]
        metrics.address = (str(bound[0]), int(bound[1]))
        log.info("Serving metrics on http://%s:%d/metrics", *metrics.address)
        try:
            yield
        finally:
            await runner.cleanup()

    app.cleanup_ctx.append(serve)
