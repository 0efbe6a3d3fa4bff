"""Opt-in Prometheus metrics at ``/metrics`` (``metrics.enabled``): the homeserver client's
counters, so the calls a process makes can be measured rather than assumed."""

from __future__ import annotations

from aiohttp import web

from .context import HOMESERVER

routes = web.RouteTableDef()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    hs = request.app[HOMESERVER]
    lines = [
        "# HELP bridge_homeserver_requests_total Homeserver requests sent, retries included.",
        "# TYPE bridge_homeserver_requests_total counter",
    ]
    for kind, count in sorted(hs.requests_by_kind.items()):
        method, _, endpoint = kind.partition(" ")
        lines.append(
            f'bridge_homeserver_requests_total{{method="{_label(method)}",'
            f'endpoint="{_label(endpoint)}"}} {count}'
        )
    lines += [
        "# HELP bridge_homeserver_writes_total Homeserver writes accepted.",
        "# TYPE bridge_homeserver_writes_total counter",
        f"bridge_homeserver_writes_total {hs.writes}",
        "# HELP bridge_homeserver_not_retried_total Non-idempotent requests given up because"
        " they may have reached the homeserver.",
        "# TYPE bridge_homeserver_not_retried_total counter",
        f"bridge_homeserver_not_retried_total {hs.not_retried}",
    ]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


def setup(app: web.Application) -> None:
    app.add_routes(routes)
