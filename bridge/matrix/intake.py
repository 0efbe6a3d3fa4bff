"""The appservice side of the HTTP server: what the homeserver calls on us.

``PUT /_matrix/app/v1/transactions/{txnId}`` is durable: a transaction is recorded only
after every event in it was handled, and a failure answers 500 so the homeserver retries.

A transaction is a replay, acknowledged without handling, only when its id was recorded
with the same content (``db/txn.py``: a sha256 of the body, leaving out the ``age`` the
homeserver recomputes per attempt; or of its timeline events alone when it comes without
ephemeral events, as Synapse resends a failed transaction). A recorded id with other
content is a new transaction: homeservers reuse ids (Synapse on SQLite starts again from 1
after every restart, a database restored from a backup repeats them), so it is handled and
recorded in place of the old one, and a warning says once per process that the homeserver
reset its transaction counter.

Integer ids are also watched for ones the homeserver skipped (``gaps.py``): a transaction
Synapse stranded is fetched by refusing the next one once with a 503, then pinging the
homeserver so that it resends at once rather than after its backoff. When no next one comes
(quiet rooms), or the stranded one was the last of a burst and shows as no gap at all, the
receiver makes one: a probe event in the bot's own room (``probe.py``), sent once after
taking over and whenever a gap is due in a quiet spell.

Only the process holding the receiver lock (``receiver.py``) answers here; a standby
answers 503 so that the proxy in front tries the next process. The acknowledging write is
made on the lock's connection, so a holder that lost its lock cannot acknowledge.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..context import (
    ALIAS_QUERY,
    CONFIG,
    DISPATCHER,
    HOMESERVER,
    IDS,
    MATRIX,
    RECEIVER,
    TXN_LOG,
    USER_QUERY,
    ExistenceQuery,
)
from ..db.txn import TxnDigest
from ..errors import (
    BadRequest,
    Forbidden,
    MissingToken,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    read_json,
)
from ..metrics import METRICS, Metrics
from .gaps import MAX_GAP, GapTracker
from .probe import ALIAS_NAME as PROBE_ALIAS
from .probe import PROBE_EVENT, ProbeRoom

log = logging.getLogger("bridge.matrix.intake")

routes = web.RouteTableDef()
# Keys Synapse uses for MSC2409 ephemeral events: the stable one and the legacy one.
_EPHEMERAL_KEYS = ("ephemeral", "de.sorunome.msc2409.ephemeral")


@dataclass
class _Intake:
    # Serialises transactions: the homeserver sends one at a time, but a retry can overlap a
    # slow first attempt, and handling the same id twice at once must not happen.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # A reset counter reuses every id after it: one warning, not one per transaction.
    reset_warned: bool = False
    gaps: GapTracker = field(default_factory=lambda: GapTracker(timeout=0))
    # The last id handled is read from as_txn on the first transaction: a bridge killed
    # mid-burst must still notice the one it never got.
    resumed: bool = False
    # Shutting down: transactions are refused (the homeserver retries them with the next
    # process), so nothing is acknowledged after the real-time side stopped taking work.
    closing: bool = False
    # Shutdown stopped waiting for the transaction being handled: the real-time side may
    # have stopped taking its work (edits, deletes, receipts), so it is not acknowledged.
    abandoned: bool = False
    # When the last transaction came (monotonic): probes go out in quiet spells only.
    last_seen: float = 0.0
    # When the probe on its way was sent (monotonic); None once a probe event arrived.
    probe_sent: float | None = None
    hurrying: asyncio.Task[None] | None = None  # the ping after a refusal
    probe: ProbeRoom | None = None  # made on the first takeover (the client comes later)


_INTAKE = web.AppKey("intake", _Intake)

# Seconds without a transaction before the receiver sends a probe event.
PROBE_QUIET = 1.0
# Probes in a row that never came back before the receiver stops sending them.
MAX_UNANSWERED_PROBES = 5
# Seconds at least between attempts when a probe could not be sent.
PROBE_RETRY = 10.0
# Seconds from a refusal to the ping that hurries the homeserver's resend.
HURRY_AFTER = 0.5


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
    # The homeserver is talking to us: it lives, whatever the monitor's last probe found.
    if (hs := request.app.get(HOMESERVER)) is not None:
        hs.heard()


class ResendRequested(ServiceUnavailable):
    """Refused once on purpose, so that the homeserver resends what it skipped."""


def check_receiving(request: web.Request) -> None:
    """The hs_token, then the role: a standby answers 503 (the proxy tries the next)."""
    check_hs_token(request)
    request.app[RECEIVER].check()


@routes.put("/_matrix/app/v1/transactions/{txn_id}")
async def put_transaction(request: web.Request) -> web.Response:
    check_receiving(request)
    metrics = request.app.get(METRICS)
    if metrics is None:
        return await _transaction(request, None)
    metrics.transactions.inc()
    try:
        return await _transaction(request, metrics)
    except ResendRequested:
        metrics.transaction_failed("resend_requested")
        raise
    except (BadRequest, PayloadTooLarge):
        metrics.transaction_failed("invalid")  # the body, before any handler ran
        raise
    except Exception:
        metrics.transaction_failed("error")
        raise


async def _transaction(request: web.Request, metrics: Metrics | None) -> web.Response:
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
    txn_log, intake, receiver = request.app[TXN_LOG], request.app[_INTAKE], request.app[RECEIVER]
    digest = TxnDigest.of(body)
    intake.last_seen = time.monotonic()
    if intake.closing:
        raise ServiceUnavailable("Shutting down; the homeserver retries with the next process")
    async with intake.lock:
        if intake.closing:
            raise ServiceUnavailable("Shutting down; the homeserver retries with the next process")
        receiver.check()  # the role may have changed while this one waited
        if not intake.resumed:
            intake.gaps.resume(await txn_log.recent_ids(MAX_GAP + 1))
            intake.resumed = True
            # Where gaps are counted from: the evidence when one turns out false.
            log.info(
                "Receiving from transaction %s on; the log's last is %s, missing before it: %s",
                txn_id, intake.gaps.last, sorted(intake.gaps.open) or "none",
            )  # fmt: skip
        recorded = await txn_log.get(txn_id)
        if recorded is not None and recorded.replayed_by(digest, has_ephemeral=bool(ephemeral)):
            log.debug("Transaction %s was already handled", txn_id)
            return web.json_response({})
        # Synapse never stores ephemeral events, so refusing a transaction with some would
        # lose them: wait for one without.
        if recorded is None and not ephemeral and intake.gaps.should_refuse(txn_id):
            # Not recorded: Synapse marks us down and its recoverer resends, oldest first.
            hurry_resend(request.app)
            raise ResendRequested(
                "Refusing this transaction once so that the homeserver resends the ones it skipped"
            )
        if recorded is not None and not intake.reset_warned:
            intake.reset_warned = True
            log.warning(
                "Transaction id %s came again with other events: the homeserver reset its "
                "transaction counter (restart on SQLite, or a restored database). Reused ids "
                "are handled as new transactions.",
                txn_id,
            )
        try:
            await request.app[DISPATCHER].dispatch(events, ephemeral)
        except Exception:
            # Not recorded: the homeserver will send it again and we handle it then.
            log.exception("Handling transaction %s failed; the homeserver will retry", txn_id)
            raise
        if intake.abandoned:
            # Handled after the shutdown gave up on it: its real-time work may have been
            # dropped. Not acknowledged: the homeserver sends it to the next receiver,
            # which handles it again (idempotent) and emits it.
            raise ServiceUnavailable("Shutting down; the homeserver retries with the next process")
        async with receiver.fenced() as conn:
            await txn_log.record(txn_id, digest, len(events) + len(ephemeral), conn=conn)
        intake.gaps.handled(txn_id)
        if any(event["type"] == PROBE_EVENT for event in events):
            intake.probe_sent = None
    if metrics is not None:
        metrics.count_events(events, ephemeral)
    return web.json_response({})


async def _answer_query(
    request: web.Request, key: web.AppKey[ExistenceQuery], name: str, missing: str
) -> web.Response:
    """The homeserver asks whether a user or alias in our namespace exists."""
    check_receiving(request)
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
    check_receiving(request)
    return web.json_response({})


def hurry_resend(app: web.Application) -> None:
    """After a refusal: ping through the homeserver once it has taken the 503, which makes
    Synapse's recoverer resend now instead of after its first backoff (2 s)."""

    async def ping() -> None:
        await asyncio.sleep(HURRY_AFTER)
        try:
            await app[MATRIX].ping()
        except Exception as e:  # the recoverer still resends, after its backoff
            log.debug("The ping after a refusal failed: %s", e)

    intake = app[_INTAKE]
    intake.hurrying = asyncio.create_task(ping(), name="intake-hurry-resend")


async def probe_for_stranded(app: web.Application) -> None:
    """While receiving: send a probe event (probe.py) once after taking over, again while
    the last one has not arrived after ``gap_recovery_seconds`` (it was stranded itself, or
    refused), and whenever a gap is due with no transaction coming to be refused. Only in
    quiet spells: traffic brings transactions of its own. Gives up after a few unanswered
    probes, until the next takeover."""
    intake = app[_INTAKE]
    if intake.probe is None:
        intake.probe = ProbeRoom(app[MATRIX], app[IDS].reserved_alias(PROBE_ALIAS))
    intake.probe_sent, wanted, unanswered = None, True, 0
    await app[RECEIVER].listening.wait()
    while unanswered < MAX_UNANSWERED_PROBES:
        await asyncio.sleep(PROBE_QUIET)
        gaps, now = intake.gaps, time.monotonic()
        if not gaps.enabled or now - intake.last_seen < PROBE_QUIET:
            continue
        if intake.probe_sent is not None:
            if now - intake.probe_sent < gaps.timeout:
                continue
            unanswered += 1
        elif wanted or gaps.due():
            unanswered = 0
        else:
            continue
        try:
            await intake.probe.send()
        except Exception as e:  # the homeserver away: try again after a while, not each second
            log.warning("Could not send a probe event (%s); trying again", e)
            await asyncio.sleep(max(gaps.timeout, PROBE_RETRY))
            continue
        intake.probe_sent, wanted = now, False
    log.warning(
        "%d probe events never came back as transactions; not probing until the next takeover",
        unanswered,
    )


def setup(app: web.Application) -> None:
    seconds = max(float(app[CONFIG].get("appservice.gap_recovery_seconds") or 0), 0.0)
    intake = app[_INTAKE] = _Intake(gaps=GapTracker(timeout=seconds))

    def taken_over() -> None:
        # Another process may have handled transactions since: resume from the log.
        intake.resumed, intake.gaps = False, GapTracker(timeout=seconds)

    app[RECEIVER].on_acquired(taken_over)
    if seconds:
        app[RECEIVER].duty("stranded-transactions", lambda: probe_for_stranded(app))
    app.add_routes(routes)
    # First of the shutdown hooks (intake is set up before the real-time side).
    app.on_shutdown.append(close)


async def close(app: web.Application, timeout: float = 2.0) -> None:
    """Stop taking transactions, and wait (bounded) for the one being handled to finish,
    so the real-time side drains everything that was acknowledged."""
    intake = app[_INTAKE]
    intake.closing = True
    if intake.hurrying is not None:
        intake.hurrying.cancel()
    try:
        await asyncio.wait_for(intake.lock.acquire(), timeout)
    except TimeoutError:
        intake.abandoned = True
        log.warning("A transaction was still being handled at shutdown; it is not acknowledged")
    else:
        intake.lock.release()
