"""Builds the aiohttp application from its parts and runs it."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from mautrix.util.async_db import Database

from . import bridge_state, chat, health, metrics, protocol
from .chat.media_urls import MEDIA_SIGNER, MediaSigner
from .config import Config
from .context import (
    CONFIG,
    CONVERSATIONS,
    DATABASE,
    DISPATCHER,
    EVENT_INDEX,
    FEDERATION,
    HOMESERVER,
    IDS,
    LOCAL_ECHO,
    MATRIX,
    PROJECTS,
    READY,
    RECEIPTS,
    RECEIVER,
    REVOCATIONS,
    ROOM_MEMBERS,
    TXN_LOG,
    USERS,
)
from .crm.engine_lock import deployment_of
from .db import create_database
from .db.conversation import ConversationStore
from .db.crm_user import CrmUserStore
from .db.project import ProjectStore
from .db.receipt import ReceiptStore
from .db.room_event import RoomEventIndex
from .db.room_member import RoomMemberStore
from .db.txn import TransactionLog
from .errors import error_middleware
from .federation import FederationPolicy
from .ids import IdMapper
from .logs import AccessLogger
from .matrix import intake
from .matrix.client import MatrixClient
from .matrix.dispatcher import EventDispatcher
from .matrix.homeserver import Homeserver
from .matrix.monitor import HomeserverMonitor
from .matrix.receiver import Receiver, receiver_key
from .revocation import Revocations
from .startup import ExitCode, StartupError, check_homeserver, ping_until_ok
from .tasks import stop

log = logging.getLogger("bridge.app")


def open_stores(app: web.Application, db: Database) -> None:
    """The stores on an open bridge database: the served app's, and offline tools' (export)."""
    app[DATABASE] = db
    app[EVENT_INDEX] = RoomEventIndex(db)
    app[USERS] = CrmUserStore(db)
    app[PROJECTS] = ProjectStore(db)
    app[CONVERSATIONS] = ConversationStore(db)
    app[ROOM_MEMBERS] = RoomMemberStore(db)
    app[RECEIPTS] = ReceiptStore(db)


def build_app(config: Config, *, check_homeserver_on_start: bool = True) -> web.Application:
    app = web.Application(
        middlewares=[*metrics.middlewares(config), error_middleware],
        client_max_size=max(config["api.max_body_size"], config["api.max_upload_size"] + 65536),
    )
    app.on_response_prepare.append(protocol.on_response_prepare)
    app[CONFIG] = config
    app[IDS] = IdMapper.from_config(config)
    app[FEDERATION] = FederationPolicy.from_config(config)
    app[MEDIA_SIGNER] = MediaSigner.from_config(config)
    app[DISPATCHER] = EventDispatcher()
    app[READY] = {"database": False, "homeserver": False}
    app[LOCAL_ECHO] = []
    app[REVOCATIONS] = Revocations()
    metrics.setup(app)
    app.add_routes(health.routes)
    app.add_routes(bridge_state.routes)

    async def database_ctx(app: web.Application) -> AsyncIterator[None]:
        db = create_database(config["database.url"], config.get("database.args"))
        try:
            await db.start()
        except Exception as e:
            raise StartupError(ExitCode.DATABASE, f"Cannot open the database: {e}") from e
        app[TXN_LOG] = TransactionLog(db)
        await app[TXN_LOG].prune()
        open_stores(app, db)
        app[READY]["database"] = True
        yield
        app[READY]["database"] = False
        await db.stop()

    async def homeserver_ctx(app: web.Application) -> AsyncIterator[None]:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=200),
            timeout=aiohttp.ClientTimeout(total=60, connect=10),
        )
        hs = Homeserver(
            config["homeserver.address"],
            config["appservice.as_token"],
            session,
            retry_budget=float(config["homeserver.retry_budget"]),
            silence_timeout=float(config["homeserver.silence_timeout"]),
            metrics=app.get(metrics.METRICS),
        )
        app[HOMESERVER] = hs
        app[MATRIX] = MatrixClient(hs, config["appservice.id"], app[IDS].bot_mxid)
        monitor: asyncio.Task | None = None
        try:
            if check_homeserver_on_start:
                await check_homeserver(app[MATRIX])
                watch = HomeserverMonitor(
                    hs,
                    lambda up: app[READY].__setitem__("homeserver", up),
                    interval=float(config["homeserver.probe_interval"]),
                )
                monitor = asyncio.create_task(watch.run(), name="homeserver-monitor")
            app[READY]["homeserver"] = True
            yield
        finally:
            if monitor is not None:
                await stop(monitor)
            await session.close()

    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(homeserver_ctx)

    receiving = bool(config["appservice.receive_transactions"])
    receiver = app[RECEIVER] = Receiver(
        None, receiver_key(deployment_of(config)), configured=receiving
    )
    if receiving:
        intake.setup(app)

        async def ping() -> None:
            # The homeserver may be backing off from a receiver that died: call it back now.
            await receiver.listening.wait()
            await ping_until_ok(app[MATRIX])

        receiver.duty("ping", ping)
    # The read model first: its indexer sees each event before the sides that read it.
    chat.setup(app)

    # The other sides plug in here; each owns its routes, handlers and background tasks.
    from . import api, crm, demo, realtime

    crm.setup(app)
    api.setup(app)
    realtime.setup(app)
    demo.setup(app)

    async def receiver_ctx(app: web.Application) -> AsyncIterator[None]:
        # Last in, first out: the lock is let go before anything a receiver uses closes.
        receiver.db = app[DATABASE]
        await receiver.start()
        yield
        await receiver.close()

    async def let_go(app: web.Application) -> None:
        # As soon as this process stops accepting requests, not after its drain: a standby
        # takes over within a poll. A transaction still in flight here cannot acknowledge
        # any more (the fence), so the homeserver sends it again to the new receiver.
        await receiver.close()

    app.cleanup_ctx.append(receiver_ctx)
    app.on_shutdown.append(let_go)
    return app


class BridgeServer:
    """One running bridge process: the app, its listener and the startup ping."""

    def __init__(self, config: Config, app: web.Application | None = None) -> None:
        self.config = config
        self.app = app or build_app(config)
        # The access log is off unless the aiohttp.access logger is at INFO; it never
        # shows a token (bridge/logs.py).
        self.runner = protocol.BridgeRunner(
            self.app,
            access_log=logging.getLogger("aiohttp.access"),
            access_log_class=AccessLogger,
            handle_signals=False,
            shutdown_timeout=5,
        )

    async def start(self, ping: bool = True) -> None:
        try:
            await self.runner.setup()
        except BaseException:
            await self.runner.cleanup()
            raise
        host, port = self.config["appservice.hostname"], int(self.config["appservice.port"])
        site = web.TCPSite(self.runner, host, port)
        try:
            await site.start()
        except OSError as e:
            await self.runner.cleanup()
            raise StartupError(ExitCode.PORT_IN_USE, f"Cannot listen on {host}:{port}: {e}") from e
        log.info("Listening on http://%s:%d", host, port)
        if ping:
            # The receiver's ping duty waits for this. ping=False: the caller pings itself
            # (tests), and this process never does, not even when it takes over.
            self.app[RECEIVER].listening.set()

    async def stop(self) -> None:
        await self.runner.cleanup()


async def run_bridge(
    config: Config, on_started: Callable[[BridgeServer], Awaitable[None]] | None = None
) -> None:
    server = BridgeServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    # What startup made (modules, routes, config) lives as long as the process: out of the
    # collector's way, so later collections walk only what requests make.
    gc.freeze()
    try:
        if on_started is not None:
            await on_started(server)
        await stop.wait()
    finally:
        logging.getLogger("bridge").info("Shutting down")
        await server.stop()
