"""What every facade route shares: bearer auth, rate limits and bounded JSON bodies."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from ..chat.media_urls import MEDIA_MARK, media_signer
from ..context import CONFIG
from ..db.crm_user import CrmUser
from ..errors import BadRequest, MissingToken, PayloadTooLarge, parse_json
from ..matrix.homeserver import for_user
from ..tasks import drop
from .auth import bearer_token, user_for, verifier
from .ratelimit import RATE_LIMITER

__all__ = ["RATE_LIMITER", "USER", "authed", "json_object", "json_response"]

USER = web.RequestKey("crm_user", CrmUser)

UserHandler = Callable[[web.Request, CrmUser], Awaitable[web.StreamResponse]]


def authed(route: str | None, *, allow_query_token: bool = False) -> Callable[[UserHandler], Any]:
    """Authenticate the CRM user, count the request against their limit for this route.

    ``route=None``: the service function counts it, whatever the door (REST or socket).
    """

    def decorate(handler: UserHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            token = bearer_token(request, allow_query=allow_query_token)
            if not token:
                raise MissingToken()
            crm_user_id = verifier(request.app).verify(token)
            if route is None:
                user = await user_for(request.app, crm_user_id)
                request[USER] = user
                with for_user():
                    return await handler(request, user)
            limiter = request.app[RATE_LIMITER]
            if request.method == "GET" and not limiter.spent(crm_user_id, route):
                return await _read_while_counted(request, handler, crm_user_id, route)
            # The signed token names the user: count the request while loading them.
            user, headers = await asyncio.gather(
                user_for(request.app, crm_user_id), limiter.hit(crm_user_id, route)
            )
            request[USER] = user
            with for_user():
                response = await handler(request, user)
            response.headers.update(headers)
            return response

        return wrapped

    return decorate


async def _read_while_counted(
    request: web.Request, handler: UserHandler, crm_user_id: str, route: str
) -> web.StreamResponse:
    """A GET (a read: nothing to undo) starts while the shared count is asked for, so its
    homeserver call does not wait on Redis; over the limit its answer is dropped for the
    429. A user this process already saw over the limit is refused before it starts."""
    count: asyncio.Future[dict[str, str]] | None = None
    read: asyncio.Future[web.StreamResponse] | None = None
    try:
        user = await user_for(request.app, crm_user_id)
        request[USER] = user
        with for_user():
            read = asyncio.ensure_future(handler(request, user))
        # Tasks start in order: the read's first step (its homeserver call) goes first, and
        # the count's Redis round trip is written once that is on its way.
        await asyncio.sleep(0)
        count = asyncio.ensure_future(request.app[RATE_LIMITER].hit(crm_user_id, route))
        headers = await count
        response = await read
    finally:  # neither outlives the request, nor logs an outcome nobody took
        for task in (count, read):
            if task is not None:
                drop(task)
    response.headers.update(headers)
    return response


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, within api.max_body_size, or a 4xx that says what is wrong."""
    limit = int(request.app[CONFIG]["api.max_body_size"])
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes")
    try:
        # Bounded by the app's client_max_size; the JSON limit is checked just below.
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes") from e
    if len(raw) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes")
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")
    return body


def _dumps(data: Any) -> bytes:
    # orjson: a history page is ~100 KB of JSON, encoded several times faster than by json.
    return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)


class JsonResponse(web.Response):
    """A JSON answer whose media paths are signed for the user who asked, as it is sent
    (bridge/chat/media_urls.py). Answers without a media path cost nothing more."""

    def __init__(self, data: Any, status: int = 200) -> None:
        body = _dumps(data)
        super().__init__(body=body, status=status, content_type="application/json")
        self._unsigned = MEDIA_MARK in body

    async def prepare(self, request: web.BaseRequest) -> Any:
        user = request.get(USER)
        if self._unsigned and user is not None and isinstance(self.body, bytes):
            self.body = media_signer(request.app).sign_json(self.body, user.crm_user_id)
        self._unsigned = False
        return await super().prepare(request)


def json_response(data: Any, status: int = 200) -> web.Response:
    return JsonResponse(data, status)
