"""The conversation list's own cost: ``ChatService.conversations_for`` in-process, no Synapse.

A user in N direct conversations, each with a message from the partner (its preview in the
row) and the partner's receipt, written straight into a PostgreSQL schema of its own; then
the list is built ``--requests`` times. It prints wall-clock percentiles and the process's
CPU time per listing (the part a busy machine distorts least), and with ``--profile`` the
top of a cProfile. What it leaves out is HTTP, auth and JSON encoding (bench.conversations
measures those, with Synapse and a facade process).

    .venv/bin/python -m bench.listing_model --conversations 1000 --requests 50
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
import uuid
from typing import Any

import asyncpg
from aiohttp import web

from bench.common import POSTGRES_DSN, base_parser, report, summary
from bridge.app import open_stores
from bridge.chat.preview import preview_of
from bridge.chat.service import ChatService
from bridge.config import Config
from bridge.context import (
    CONFIG,
    CONVERSATIONS,
    EVENT_INDEX,
    IDS,
    RECEIPTS,
    ROOM_MEMBERS,
    USERS,
)
from bridge.db import create_database
from bridge.db.conversation import DIRECT
from bridge.db.crm_user import CrmUser
from bridge.ids import IdMapper
from bridge.matrix.relations import ensure as ensure_relations


def _app(db: Any) -> web.Application:
    config = Config.load(None, environ={})
    app = web.Application()
    app[CONFIG] = config
    app[IDS] = IdMapper.from_config(config)
    open_stores(app, db)
    ensure_relations(app)
    return app


async def _fill(app: web.Application, lister: CrmUser, n: int) -> None:
    await app[USERS].upsert(lister)
    bot = app[IDS].bot_mxid
    for i in range(n):
        partner = CrmUser(f"p{i}", f"@crm_p{i}:localhost", f"Partner {i}", f"p{i}@example.com")
        await app[USERS].upsert(partner)
        room = f"!room{i}:localhost"
        await app[CONVERSATIONS].add(room, DIRECT, key=f"dm{i}")
        await app[ROOM_MEMBERS].set_many(
            room, {lister.mxid: "join", partner.mxid: "join", bot: "join"}
        )
        text = f"hello {i}"
        event = {
            "event_id": f"$e{i}",
            "room_id": room,
            "sender": partner.mxid,
            "type": "m.room.message",
            "origin_server_ts": 1_000_000 + i,
            "content": {
                "msgtype": "m.text",
                "body": text,
                "com.crm.message": {"type": "text", "content": text, "attachments": []},
            },
        }
        row, _ = await app[EVENT_INDEX].add(
            event["event_id"], room, partner.mxid, "m.room.message", "m.text", 1_000_000 + i
        )
        await app[CONVERSATIONS].touch(room, event["event_id"], 1_000_000 + i, preview_of(event))
        await app[RECEIPTS].advance(room, partner.mxid, event["event_id"], row.pos, 1_000_000 + i)


async def main(args: argparse.Namespace) -> None:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(POSTGRES_DSN)
    await admin.execute(f"CREATE SCHEMA {schema}")
    db = create_database(
        POSTGRES_DSN, {"server_settings": {"search_path": schema}, "min_size": 1, "max_size": 10}
    )
    await db.start()
    try:
        app = _app(db)
        lister = CrmUser("lister", "@crm_lister:localhost", "Lister", "lister@example.com")
        await _fill(app, lister, args.conversations)
        chat = ChatService(app)
        for _ in range(5):
            assert len(await chat.conversations_for(lister)) == args.conversations
        profile = cProfile.Profile() if args.profile else None
        times: list[float] = []
        cpu = time.process_time()
        for _ in range(args.requests):
            start = time.perf_counter()
            if profile is not None:
                profile.enable()
            await chat.conversations_for(lister)
            if profile is not None:
                profile.disable()
            times.append((time.perf_counter() - start) * 1000)
        cpu_ms = (time.process_time() - cpu) * 1000 / args.requests
        results = {
            "conversations": args.conversations,
            "cpu_ms_per_listing": round(cpu_ms, 2),
            **summary(times),
        }
        report("conversations_for in-process", results, args.json)
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
    finally:
        await db.stop()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


def entry() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--profile", action="store_true")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    entry()
