"""A thin client-server API client acting as the appservice or one of its puppets.

Every request carries the as_token; ``as_user`` masquerades as a puppet (``?user_id=``).
It retries what the homeserver asks us to retry (429 with ``retry_after_ms``, 502-504,
connection errors) within a time budget, then raises :class:`HomeserverUnavailable`.
Requests made for a CRM user (inside :func:`for_user`) don't wait for a homeserver that is
gone: they give up once it has answered nothing for ``silence_timeout``, and at once while
the monitor (:mod:`.monitor`) holds it down. Only 429s use the whole budget for them.
Requests made inside :func:`patience` (real-time work, where a look-up only decorates an
event that many sockets wait for) give up after that many seconds in all, retries included.
It counts the writes it sends, so idempotency can be measured rather than assumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Coroutine, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import aiohttp
import orjson

from ..errors import BridgeError, HomeserverUnavailable


class Metrics(Protocol):
    """What the homeserver seam reports (bridge/metrics.py implements it)."""

    def homeserver_answered(self, method: str, path: str, status: int, seconds: float) -> None: ...

    def homeserver_failed(self, method: str, path: str, reason: str) -> None: ...


log = logging.getLogger("bridge.matrix.homeserver")

_RETRYABLE_STATUS = (502, 503, 504)

T = TypeVar("T")

# Set while serving a CRM user (REST facade, Socket.IO): a person is waiting for the answer.
_FOR_USER: ContextVar[bool] = ContextVar("homeserver_for_user", default=False)


# Set by real-time lanes: no request made inside takes longer than this, retries included.
_PATIENCE: ContextVar[float | None] = ContextVar("homeserver_patience", default=None)


@contextlib.contextmanager
def patience(seconds: float | None) -> Iterator[None]:
    """Homeserver requests made inside give up (HomeserverUnavailable) after ``seconds``."""
    token = _PATIENCE.set(seconds)
    try:
        yield
    finally:
        _PATIENCE.reset(token)


@contextlib.contextmanager
def for_user() -> Iterator[None]:
    """Homeserver requests made inside fail fast when the homeserver does not answer."""
    token = _FOR_USER.set(True)
    try:
        yield
    finally:
        _FOR_USER.reset(token)


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


# After these path segments come ids (or other free text): named, not copied, in metrics.
_PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "rooms": ("{roomId}",),
    "profile": ("{userId}",),
    "user": ("{userId}",),
    "presence": ("{userId}",),
    "typing": ("{userId}",),
    "appservice": ("{appserviceId}",),
    "room": ("{roomAlias}",),
    "send": ("{eventType}", "{txnId}"),
    "state": ("{eventType}", "{stateKey}"),
    "event": ("{eventId}",),
    "context": ("{eventId}",),
    "receipt": ("{receiptType}", "{eventId}"),
    "redact": ("{eventId}", "{txnId}"),
    "relations": ("{eventId}", "{relType}", "{eventType}"),
    "account_data": ("{type}",),
    "download": ("{serverName}", "{mediaId}"),
    "thumbnail": ("{serverName}", "{mediaId}"),
}
# Matrix id sigils, raw or percent-encoded: a safety net for paths not described above.
_SIGILS = ("!", "@", "#", "$", "%21", "%40", "%23", "%24")


def endpoint_of(path: str) -> str:
    """The endpoint template of a client-server path, without ids: bounded label values.

    ``/_matrix/client/v3/rooms/!r%3Ahs/send/m.room.message/t1`` ->
    ``/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}``.
    """
    parts = path.split("?", 1)[0].split("/")
    out: list[str] = []
    pending: tuple[str, ...] = ()
    for part in parts:
        if pending:
            out.append(pending[0])
            pending = pending[1:]
            continue
        out.append("{id}" if part.startswith(_SIGILS) else part)
        pending = _PLACEHOLDERS.get(part, ())
    return "/".join(out)


def never_sent(error: BaseException) -> bool:
    """True when the request certainly never left: the connection could not be opened."""
    return isinstance(error, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)


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
        silence_timeout: float = 1.5,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.retry_budget = retry_budget
        self.silence_timeout = silence_timeout
        self._auth = {"Authorization": f"Bearer {as_token}"}
        self.writes = 0
        self.requests = 0
        self.rate_limited = 0
        # Non-idempotent requests given up because they may have reached the homeserver.
        self.not_retried = 0
        # Accepted writes by endpoint ("typing", "send", "presence", ...), to measure them;
        # keyed by a fixed set of kinds, so bounded.
        self.writes_by_kind: Counter[str] = Counter()
        # When the homeserver last answered anything (ours or the monitor's probes), and
        # whether the monitor holds it up.
        self.last_answer = time.monotonic()
        self.available = True

    def heard(self) -> None:
        self.last_answer = time.monotonic()

    def down(self) -> bool:
        """Counted down by the monitor and silent since: a sign of life heard in between (an
        answer, a transaction pushed to us) lets requests through before the next probe."""
        return not self.available and self.silent_for() >= self.silence_timeout

    def silent_for(self, since: float = 0.0) -> float:
        """Seconds without any answer from the homeserver, counted from ``since`` at most."""
        return time.monotonic() - max(self.last_answer, since)

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
        homeserver (429, a connection that could not be opened): a 5xx, a timeout or a
        connection lost after sending may hide a request that took effect.
        """
        user_waits = _FOR_USER.get()
        if user_waits and self.down():
            raise HomeserverUnavailable()
        query = dict(params or {})
        if as_user:
            query["user_id"] = as_user
        headers = dict(self._auth)
        if content_type:
            headers["Content-Type"] = content_type
        # Silence is counted from here, and again after each wait a 429 asked for.
        quiet_since = time.monotonic()
        deadline = quiet_since + self.retry_budget
        limit = _PATIENCE.get()
        if limit is not None:
            deadline = min(deadline, quiet_since + limit)
        backoff = 0.25
        while True:
            self.requests += 1
            if method != "GET":
                self.writes += 1
            rate_limited = False
            started = time.perf_counter()
            try:
                attempt = self._attempt(
                    method, path, raw, json=json, data=data, params=query, headers=headers
                )
                status, resp_headers, body = await self._bounded(
                    attempt,
                    quiet_since if user_waits else None,
                    deadline if limit is not None else None,
                )
                if self.metrics is not None:
                    self.metrics.homeserver_answered(
                        method, path, status, time.perf_counter() - started
                    )
                if status < 300:
                    if method != "GET":
                        self.writes_by_kind[write_kind(path)] += 1
                    return body
                errcode = body.get("errcode", "M_UNKNOWN") if isinstance(body, dict) else ""
                message = body.get("error", "") if isinstance(body, dict) else str(body)
                if status == 429 or errcode == "M_LIMIT_EXCEEDED":
                    self.rate_limited += 1
                    rate_limited = True
                    wait = _retry_after(resp_headers, body, backoff)
                elif status in _RETRYABLE_STATUS and idempotent:
                    wait = backoff
                elif status in _RETRYABLE_STATUS:
                    raise HomeserverUnavailable()
                else:
                    raise MatrixError(status, errcode, message, body)
            except (TimeoutError, aiohttp.ClientConnectionError) as e:
                if self.metrics is not None:
                    reason = "timeout" if isinstance(e, TimeoutError) else "connection"
                    self.metrics.homeserver_failed(method, path, reason)
                if not idempotent and not never_sent(e):
                    # A timeout or a dropped connection after sending may hide a request
                    # that took effect (a second createRoom would make a second room).
                    self.not_retried += 1
                    log.warning("Not retrying %s %s: %s", method, path.split("?")[0], e)
                    raise HomeserverUnavailable() from e
                wait = backoff
                message = str(e) or type(e).__name__
            # A rate-limited or failed request sent nothing durable: don't count it as a write.
            if method != "GET":
                self.writes -= 1
            # The retry budget is for 429s; a user is not kept waiting on a silent homeserver.
            silent = self.silent_for(quiet_since) + wait > self.silence_timeout
            gone = user_waits and not rate_limited and (silent or self.down())
            if gone or time.monotonic() + wait > deadline:
                log.warning("Giving up on %s %s: %s", method, path.split("?")[0], message)
                raise HomeserverUnavailable()
            log.debug("Retrying %s %s in %.2fs (%s)", method, path, wait, message)
            await asyncio.sleep(wait)
            if rate_limited:
                quiet_since = time.monotonic()
            backoff = min(backoff * 2, 8)

    async def _attempt(
        self, method: str, path: str, raw: bool, **kw: Any
    ) -> tuple[int, Mapping[str, str], Any]:
        async with self.session.request(method, self.base_url + path, **kw) as resp:
            # 502-504 may come from a proxy in front: not a sign the homeserver lives.
            if resp.status not in _RETRYABLE_STATUS:
                self.heard()
            if raw and resp.status < 300:
                body: Any = (await resp.read(), resp.headers.get("Content-Type", ""))
            else:
                body = await _decode(resp)
            return resp.status, resp.headers, body

    async def _bounded(
        self, attempt: Coroutine[Any, Any, T], watched_since: float | None, deadline: float | None
    ) -> T:
        """Await ``attempt`` in this task (a task per request would cost a loop turn before
        anything is sent), with TimeoutError once ``deadline`` (monotonic) passes or, when
        ``watched_since`` is set, once the homeserver has shown no sign of life (an answer to
        any request, the monitor's probes included) for ``silence_timeout`` since then. A
        slow homeserver that still answers is waited for."""
        if watched_since is None and deadline is None:
            return await attempt
        loop = asyncio.get_running_loop()
        at = None if deadline is None else loop.time() + max(deadline - time.monotonic(), 0.001)
        silent = False
        try:
            async with asyncio.timeout_at(at) as timeout:
                watch: asyncio.TimerHandle | None = None
                if watched_since is not None:

                    def check() -> None:
                        nonlocal watch, silent
                        left = self.silence_timeout - self.silent_for(watched_since)
                        if left <= 0 or self.down():
                            silent = True
                            timeout.reschedule(loop.time())  # give up now
                        else:
                            watch = loop.call_later(left, check)

                    check()  # silent already: the timeout expires before anything is awaited
                try:
                    return await attempt
                finally:
                    if watch is not None:
                        watch.cancel()
        except TimeoutError as e:
            if silent:
                raise TimeoutError("the homeserver stopped answering") from e
            raise

    # Convenience verbs.
    async def get(self, path: str, **kw: Any) -> Any:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        return await self.request("POST", path, json={} if json is None else json, **kw)

    async def put(self, path: str, json: Any = None, **kw: Any) -> Any:
        return await self.request("PUT", path, json={} if json is None else json, **kw)


async def _decode(resp: aiohttp.ClientResponse) -> Any:
    raw = await resp.read()
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"error": raw[:200].decode(errors="replace")}


def _retry_after(headers: Mapping[str, str], body: Any, fallback: float) -> float:
    if isinstance(body, dict) and isinstance(body.get("retry_after_ms"), int | float):
        return max(body["retry_after_ms"] / 1000, 0.01)
    header = headers.get("Retry-After")
    if header and header.isdigit():
        return float(header)
    return fallback
