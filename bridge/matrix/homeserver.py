"""A thin client-server API client acting as the appservice or one of its puppets.

Every request carries the as_token; ``as_user`` masquerades as a puppet (``?user_id=``).
It retries what the homeserver asks us to retry (429 with ``retry_after_ms``, 502-504,
connection errors) within a time budget, then raises :class:`HomeserverUnavailable`.
It counts the writes it sends, so idempotency can be measured rather than assumed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from ..errors import BridgeError, HomeserverUnavailable

log = logging.getLogger("bridge.matrix.homeserver")

_RETRYABLE_STATUS = (502, 503, 504)


class MatrixError(BridgeError):
    """The homeserver answered with an error it meant (anything but 429 and 502-504).

    ``status`` is the homeserver's HTTP status. Where callers don't handle it, the error
    middleware answers with the same 4xx and the homeserver's errcode, or 503 for a 5xx.
    """

    def __init__(self, status: int, errcode: str, message: str, body: Any = None) -> None:
        super().__init__(
            f"The homeserver refused the request: {message or errcode}", errcode=errcode
        )
        self.status = status  # type: ignore[misc]
        # A 401 means the homeserver refused our as_token: the bridge's fault, not the
        # caller's, and it must not look like the caller's own token expired.
        unusable = status >= 500 or status == 401
        self.response_status = HomeserverUnavailable.status if unusable else status
        self.message = message
        self.body = body

    def __str__(self) -> str:
        return f"{self.status} {self.errcode}: {self.message}"

    def body_for_client(self) -> dict[str, Any]:
        if self.response_status >= 500:
            return HomeserverUnavailable().body()
        return {
            "message": f"The homeserver refused the request: {self.message or self.errcode}",
            "errcode": self.errcode,
        }


def write_kind(path: str) -> str:
    """``/_matrix/client/v3/rooms/!r/typing/@u`` -> "typing"; ``.../presence/@u/status`` ->
    "presence"."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    rest = parts[3:] if len(parts) > 3 else parts[-1:]
    if len(rest) >= 3 and rest[0] == "rooms":
        return rest[2]
    return rest[0] if rest else ""


def q(value: str) -> str:
    """Quote one path segment (room ids, user ids, aliases, event ids)."""
    return quote(value, safe="")


class Homeserver:
    def __init__(
        self,
        base_url: str,
        as_token: str,
        session: aiohttp.ClientSession,
        *,
        retry_budget: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.retry_budget = retry_budget
        self._auth = {"Authorization": f"Bearer {as_token}"}
        self.writes = 0
        self.requests = 0
        self.rate_limited = 0
        # Accepted writes by endpoint ("typing", "send", "presence", ...), to measure them.
        self.writes_by_kind: Counter[str] = Counter()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        content_type: str | None = None,
        params: Mapping[str, str] | None = None,
        as_user: str | None = None,
        raw: bool = False,
        idempotent: bool = True,
    ) -> Any:
        """Send one request; ``path`` starts with ``/_matrix``. Returns the decoded JSON.

        ``idempotent=False`` (createRoom) retries only what certainly did not reach the
        homeserver (429, refused connections): a 5xx may hide a request that took effect.
        """
        query = dict(params or {})
        if as_user:
            query["user_id"] = as_user
        headers = dict(self._auth)
        if content_type:
            headers["Content-Type"] = content_type
        deadline = time.monotonic() + self.retry_budget
        backoff = 0.25
        while True:
            self.requests += 1
            if method != "GET":
                self.writes += 1
            try:
                async with self.session.request(
                    method,
                    self.base_url + path,
                    json=json,
                    data=data,
                    params=query,
                    headers=headers,
                ) as resp:
                    if raw and resp.status < 300:
                        return await resp.read(), resp.headers.get("Content-Type", "")
                    body = await _decode(resp)
                    if resp.status < 300:
                        if method != "GET":
                            self.writes_by_kind[write_kind(path)] += 1
                        return body
                    errcode = body.get("errcode", "M_UNKNOWN") if isinstance(body, dict) else ""
                    message = body.get("error", "") if isinstance(body, dict) else str(body)
                    if resp.status == 429 or errcode == "M_LIMIT_EXCEEDED":
                        self.rate_limited += 1
                        wait = _retry_after(resp, body, backoff)
                    elif resp.status in _RETRYABLE_STATUS and idempotent:
                        wait = backoff
                    elif resp.status in _RETRYABLE_STATUS:
                        raise HomeserverUnavailable()
                    else:
                        raise MatrixError(resp.status, errcode, message, body)
            except (TimeoutError, aiohttp.ClientConnectionError) as e:
                wait = backoff
                message = str(e) or type(e).__name__
            # A rate-limited or failed request sent nothing durable: don't count it as a write.
            if method != "GET":
                self.writes -= 1
            if time.monotonic() + wait > deadline:
                log.warning("Giving up on %s %s: %s", method, path.split("?")[0], message)
                raise HomeserverUnavailable()
            log.debug("Retrying %s %s in %.2fs (%s)", method, path, wait, message)
            await asyncio.sleep(wait)
            backoff = min(backoff * 2, 8)

    # Convenience verbs.
    async def get(self, path: str, **kw: Any) -> Any:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        return await self.request("POST", path, json={} if json is None else json, **kw)

    async def put(self, path: str, json: Any = None, **kw: Any) -> Any:
        return await self.request("PUT", path, json={} if json is None else json, **kw)


async def _decode(resp: aiohttp.ClientResponse) -> Any:
    try:
        return await resp.json(content_type=None)
    except ValueError:
        return {"error": (await resp.text())[:200]}


def _retry_after(resp: aiohttp.ClientResponse, body: Any, fallback: float) -> float:
    if isinstance(body, dict) and isinstance(body.get("retry_after_ms"), int | float):
        return max(body["retry_after_ms"] / 1000, 0.01)
    header = resp.headers.get("Retry-After")
    if header and header.isdigit():
        return float(header)
    return fallback
