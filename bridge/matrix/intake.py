"""The appservice side of the HTTP server: what the homeserver calls on us.

``PUT /_matrix/app/v1/transactions/{txnId}`` is durable: a transaction id is recorded only
after every event in it was handled, a replay of a recorded id is acknowledged without
handling, and a failure answers 500 so the homeserver retries later.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from aiohttp import web

from ..context import (
    ALIAS_QUERY,
    CONFIG,
    DISPATCHER,
    TXN_LOG,
    USER_QUERY,
    ExistenceQuery,
)
from ..errors import BadRequest, Forbidden, MissingToken, NotFound, read_json

log = logging.getLogger("bridge.matrix.intake")

routes = web.RouteTableDef()
# Keys Synapse uses for MSC2409 ephemeral events: the stable one and the legacy one.
_EPHEMERAL_KEYS = ("ephemeral", "de.sorunome.msc2409.ephemeral")
# Serialises transactions: the homeserver sends one at a time, but a retry can overlap a
# slow first attempt, and handling the same id twice at once must not happen.
_TXN_LOCK = web.AppKey("txn_lock", asyncio.Lock)


_TIMELINE_FIELDS = ("type", "event_id", "room_id", "sender")


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _well_formed(event: Any, fields: tuple[str, ...]) -> bool:
    """Handlers may rely on these fields; an event without them is skipped, not fatal.

    Failing the transaction instead would make the homeserver resend it forever and stop
    every later event from arriving.
    """
    ok = (
        isinstance(event, dict)
        and all(isinstance(event.get(name), str) for name in fields)
        and isinstance(event.get("content", {}), dict)
    )
    if not ok:
        log.warning("Skipping a malformed event: %.200r", event)
    return ok


def check_hs_token(request: web.Request) -> None:
    header = request.headers.get("Authorization", "")
    token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    # The query parameter is deprecated in the spec but older homeservers still send it.
    token = token or request.query.get("access_token", "")
    if not token:
        raise MissingToken("Missing hs_token", errcode="M_UNAUTHORIZED")
    expected = request.app[CONFIG]["appservice.hs_token"]
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise Forbidden("Invalid hs_token")


@routes.put("/_matrix/app/v1/transactions/{txn_id}")
async def put_transaction(request: web.Request) -> web.Response:
    check_hs_token(request)
    txn_id = request.match_info["txn_id"]
    # Events carry whatever content a Matrix client sent, and a refused transaction is
    # retried forever: nesting is bounded only by what the parser takes, not MAX_DEPTH.
    body = await read_json(request, max_depth=None)
    if not isinstance(body, dict):
        raise BadRequest("A transaction must be a JSON object")
    events = [e for e in _list(body.get("events")) if _well_formed(e, _TIMELINE_FIELDS)]
    ephemeral: list[dict[str, Any]] = []
    for key in _EPHEMERAL_KEYS:
        ephemeral.extend(e for e in _list(body.get(key)) if _well_formed(e, ("type",)))
    txn_log = request.app[TXN_LOG]
    async with request.app[_TXN_LOCK]:
        if await txn_log.seen(txn_id):
            log.debug("Transaction %s was already handled", txn_id)
            return web.json_response({})
        try:
            await request.app[DISPATCHER].dispatch(events, ephemeral)
        except Exception:
            # Not recorded: the homeserver will send it again and we handle it then.
            log.exception("Handling transaction %s failed; the homeserver will retry", txn_id)
            raise
        await txn_log.record(txn_id, len(events) + len(ephemeral))
    return web.json_response({})


async def _answer_query(
    request: web.Request, key: web.AppKey[ExistenceQuery], name: str, missing: str
) -> web.Response:
    """The homeserver asks whether a user or alias in our namespace exists."""
    check_hs_token(request)
    query = request.app.get(key)
    if query and await query(request.match_info[name]):
        return web.json_response({})
    raise NotFound(missing)


@routes.get("/_matrix/app/v1/users/{user_id}")
async def query_user(request: web.Request) -> web.Response:
    return await _answer_query(request, USER_QUERY, "user_id", "No such user in the CRM")


@routes.get("/_matrix/app/v1/rooms/{alias}")
async def query_alias(request: web.Request) -> web.Response:
    return await _answer_query(request, ALIAS_QUERY, "alias", "No such project room")


@routes.post("/_matrix/app/v1/ping")
async def ping(request: web.Request) -> web.Response:
    check_hs_token(request)
    return web.json_response({})


def setup(app: web.Application) -> None:
    app[_TXN_LOCK] = asyncio.Lock()
    app.add_routes(routes)
