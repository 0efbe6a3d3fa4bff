"""Every failure the bridge reports over HTTP, and the one middleware that renders them.

The body is always ``{"message": <sentence>, "errcode": <code>}``: seed frontends display
``message`` and Matrix-style tools switch on ``errcode``. Under ``/_matrix`` the body also
carries ``error``, the field name the Matrix spec uses.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import asyncpg
from aiohttp import web

from . import safejson

log = logging.getLogger("bridge.errors")


class BridgeError(Exception):
    status: ClassVar[int] = 500
    errcode: ClassVar[str] = "M_UNKNOWN"
    default_message: ClassVar[str] = "Internal server error"

    def __init__(
        self,
        message: str | None = None,
        *,
        errcode: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        if errcode:
            self.errcode = errcode  # type: ignore[misc]
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"message": self.message, "errcode": self.errcode, **self.extra}


class BadRequest(BridgeError):
    status = 400
    errcode = "M_BAD_JSON"
    default_message = "The request is malformed"


class InvalidParam(BadRequest):
    errcode = "M_INVALID_PARAM"


class MissingToken(BridgeError):
    status = 401
    errcode = "M_MISSING_TOKEN"
    default_message = "Authentication is required"


class UnknownToken(BridgeError):
    status = 401
    errcode = "M_UNKNOWN_TOKEN"
    default_message = "The access token is not valid"


class Forbidden(BridgeError):
    status = 403
    errcode = "M_FORBIDDEN"
    default_message = "You are not allowed to do that"


class NotFound(BridgeError):
    status = 404
    errcode = "M_NOT_FOUND"
    default_message = "Not found"


class Conflict(BridgeError):
    status = 409
    errcode = "M_CONFLICT"
    default_message = "The request conflicts with the current state"


class PayloadTooLarge(BridgeError):
    status = 413
    errcode = "M_TOO_LARGE"
    default_message = "The request body is too large"


class UnsupportedMediaType(BridgeError):
    status = 415
    errcode = "M_UNSUPPORTED_TYPE"
    default_message = "This type of content is not accepted"


class RateLimited(BridgeError):
    status = 429
    errcode = "M_LIMIT_EXCEEDED"
    default_message = "Too many requests; try again later"


class HomeserverUnavailable(BridgeError):
    status = 503
    errcode = "M_HOMESERVER_UNAVAILABLE"
    default_message = "The homeserver is unavailable; try again shortly"


class ServiceUnavailable(BridgeError):
    status = 503
    errcode = "M_SERVICE_UNAVAILABLE"
    default_message = "A backing service is unavailable; try again shortly"


class DatabaseUnavailable(ServiceUnavailable):
    default_message = "The database is unavailable; try again shortly"


# A backing service that is down or restarting: the pool reconnects by itself, so the
# client should retry (503) rather than be told the bridge is broken (500).
_DATABASE_DOWN = (
    asyncpg.PostgresConnectionError,  # 08xxx: connection lost or refused by the server
    asyncpg.exceptions.OperatorInterventionError,  # 57xxx: shutting down, starting up
    # 53xxx: too many connections (other processes hold them all), out of memory or disk.
    asyncpg.exceptions.InsufficientResourcesError,
    ConnectionError,  # refused or reset while (re)connecting
)


def unavailable(error: BaseException) -> ServiceUnavailable | None:
    """The 503 for an exception that means the database is down, else None."""
    if isinstance(error, _DATABASE_DOWN):
        return DatabaseUnavailable()
    if isinstance(error, asyncpg.InterfaceError) and "closed" in str(error):
        return DatabaseUnavailable()  # the pool's connection was closed under it
    if isinstance(error, asyncpg.InternalClientError) and "in progress" in str(error):
        # A connection the server dropped mid-protocol, not yet seen as closed by the pool.
        return DatabaseUnavailable()
    if isinstance(error, OSError) and error.errno is None and "connect" in str(error).lower():
        # asyncpg raises a bare OSError("Multiple exceptions: ...") when every address fails.
        return DatabaseUnavailable()
    return None


# aiohttp's own HTTP errors (unknown route, wrong method, body too large) get the same shape.
_HTTP_ERRCODES = {
    400: "M_BAD_JSON",
    401: "M_MISSING_TOKEN",
    403: "M_FORBIDDEN",
    404: "M_UNRECOGNIZED",
    405: "M_UNRECOGNIZED",
    413: "M_TOO_LARGE",
    415: "M_UNSUPPORTED_TYPE",
    429: "M_LIMIT_EXCEEDED",
}


def error_response(
    status: int, body: dict[str, Any], path: str, headers: dict[str, str] | None = None
) -> web.Response:
    if path.startswith("/_matrix/"):
        body = {**body, "error": body.get("message")}
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def client_body(e: BridgeError) -> dict[str, Any]:
    """What the client sees of an error, whatever the door (HTTP or Socket.IO)."""
    return e.body_for_client() if hasattr(e, "body_for_client") else e.body()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _check_decodable(request: web.Request) -> None:
    """aiohttp decodes header bytes that are not UTF-8 into lone surrogates, which fail
    later (``token.encode()`` in every auth check, a 500): refuse them at the door. Only
    what the bridge reads: a stray cookie from another app must not lock anyone out."""
    for what, text in (("path", request.raw_path), ("Authorization header", _auth(request))):
        if safejson.SURROGATE.search(text):
            raise BadRequest(f"The request's {what} is not valid UTF-8", errcode="M_INVALID_PARAM")


def _auth(request: web.Request) -> str:
    return request.headers.get("Authorization", "")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        _check_decodable(request)
        return await handler(request)
    except BridgeError as e:
        # A homeserver error nobody handled carries the status to answer with separately.
        status = getattr(e, "response_status", e.status)
        body = client_body(e)
        # A homeserver outage is logged where it is noticed, not once per request.
        if status >= 500 and not isinstance(e, HomeserverUnavailable):
            log.warning("%s %s failed: %s", request.method, request.path, e)
        return error_response(status, body, request.path, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = e.reason if e.text in (None, "", f"{e.status}: {e.reason}") else e.text
        if e.status == 404:
            message = "No such endpoint"
        elif e.status == 405:
            message = f"Method {request.method} is not allowed here"
        body = {"message": message, "errcode": _HTTP_ERRCODES.get(e.status, "M_UNKNOWN")}
        headers = {k: v for k, v in e.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(e.status, body, request.path, headers)
    except Exception as e:
        if (down := unavailable(e)) is not None:
            log.warning("%s %s failed: %s: %s", request.method, request.path, type(e).__name__, e)
            return error_response(down.status, down.body(), request.path, {"Retry-After": "1"})
        log.exception("Unhandled error in %s %s", request.method, request.path)
        body = {"message": "Internal server error", "errcode": "M_UNKNOWN"}
        return error_response(500, body, request.path)


def parse_json(raw: bytes, *, max_depth: int | None = safejson.MAX_DEPTH) -> Any:
    """A JSON body, or a 400 that says what is wrong with it."""
    if not raw:
        raise BadRequest("The request body is empty; a JSON object was expected")
    try:
        return safejson.loads(raw, max_depth)
    except safejson.UnsafeJSON as e:
        raise BadRequest(f"The request body {e.reason}", errcode=e.errcode) from e


async def read_json(request: web.Request, *, max_depth: int | None = safejson.MAX_DEPTH) -> Any:
    """Parse a JSON body (nesting bounded, strings valid Unicode) or raise a 400."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise PayloadTooLarge() from e
    return parse_json(raw, max_depth=max_depth)
