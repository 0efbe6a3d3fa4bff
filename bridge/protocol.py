"""What every HTTP response carries, and how a request that is not HTTP is answered.

aiohttp answers a request it cannot parse (a request line over 8 KB, a bad header) before
any handler or middleware runs, logs the parser's traceback at ERROR and names its version
in ``Server``. Anyone can send such bytes, so here that costs one WARNING line, and the
answer is our JSON error with our headers.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .errors import error_response

log = logging.getLogger("bridge.http")

SERVER_NAME = "crm-bridge"


def set_headers(response: web.StreamResponse) -> None:
    # No version in Server; no content sniffing of anything we send (JSON above all).
    response.headers["Server"] = SERVER_NAME
    response.headers["X-Content-Type-Options"] = "nosniff"


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    set_headers(response)


class QuietRequestHandler(RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            response = super().handle_error(request, status, exc, message)
            set_headers(response)
            return response
        # The class names the fault; the message may quote the request line (and its token).
        log.warning(
            "Refused a malformed HTTP request from %s: %s", request.remote, type(exc).__name__
        )
        body = {"message": "The HTTP request is malformed", "errcode": "M_UNRECOGNIZED"}
        response = error_response(status, body, "")
        set_headers(response)
        response.force_close()
        return response


class QuietServer(web.Server):
    def __call__(self) -> RequestHandler:
        return QuietRequestHandler(self, loop=self._loop, **self._kwargs)


class BridgeRunner(web.AppRunner):
    """An AppRunner whose connections answer unparseable requests quietly.

    aiohttp has no option for the protocol class: this swaps the Server it builds for one
    that makes ``QuietRequestHandler`` (tests/test_hostile_input.py pins the behaviour)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return QuietServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
