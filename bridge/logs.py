"""Log output: a JSON formatter (one object per line) and an access log without secrets.

Both are picked in the ``logging`` section of the config (dictConfig): the ``json``
formatter, and the ``aiohttp.access`` logger at INFO for one line per HTTP request.
"""

from __future__ import annotations

import copy
import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from .config import Config

# Every attribute a LogRecord has of its own; anything else was passed in ``extra``.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# Query parameters that carry credentials: the Socket.IO handshake's ``token``, the
# deprecated ``access_token`` some homeservers still send with the hs_token, a signed media
# URL's ``sig`` (bridge/chat/media_urls.py).
SECRET_PARAMS = frozenset(
    ("token", "access_token", "jwt", "auth", "authorization", "password", "sig")
)
REDACTED = "<redacted>"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...extra fields}``, one per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def redact_query(query: str) -> str:
    """The query string with credential values replaced (keys and order kept)."""
    if not query:
        return ""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode(
        [(k, REDACTED if k.lower() in SECRET_PARAMS else v) for k, v in pairs], safe="<>"
    )


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path, redacted query, status, duration. Never the
    Authorization header, never a token in the query string (aiohttp's own format logs the
    raw request line, ``?token=...`` included)."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        query = redact_query(request.query_string)
        target = f"{request.path}?{query}" if query else request.path
        self.logger.info(
            '%s "%s %s" %d %.1fms',
            request.remote,
            request.method,
            target,
            response.status,
            time * 1000,
            extra={
                "remote": request.remote,
                "method": request.method,
                "path": target,
                "status": response.status,
                "duration_ms": round(time * 1000, 1),
            },
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def configure_logging(config: Config) -> None:
    settings = copy.deepcopy(config["logging"])
    # `formatter: json` works even with a logging section written before it existed.
    formatters = settings.setdefault("formatters", {})
    formatters.setdefault("json", {"()": "bridge.logs.JsonFormatter"})
    logging.config.dictConfig(settings)
