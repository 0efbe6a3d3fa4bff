"""``python -m bridge export <conversationId|projectId> --format jsonl [-o file]``.

Archives a conversation's history from Matrix for the CRM's records: one message object
per line, oldest first, the same objects as ``GET /api/chat/conversations/{id}/messages``
(the chat service serialises them). The bridge's database says which room and who may
read it; the bodies come from the homeserver. A progress bar goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import aiohttp
from aiohttp import web
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .api.history import whole_history
from .app import open_stores
from .chat.service import ChatService
from .config import Config
from .context import (
    CONFIG,
    CONVERSATIONS,
    EVENT_INDEX,
    HOMESERVER,
    IDS,
    MATRIX,
    PROJECTS,
    ROOM_MEMBERS,
)
from .db import create_database
from .db.conversation import Conversation
from .errors import HomeserverUnavailable
from .ids import IdMapper
from .matrix.client import MatrixClient
from .matrix.homeserver import Homeserver, MatrixError
from .matrix.relations import ensure as ensure_relations

FORMATS = ("jsonl",)


@contextlib.asynccontextmanager
async def offline_app(config: Config) -> AsyncIterator[web.Application]:
    """The stores and homeserver client the chat service reads, without serving anything."""
    app = web.Application()
    app[CONFIG] = config
    app[IDS] = IdMapper.from_config(config)
    db = create_database(config["database.url"], config.get("database.args"))
    await db.start()
    try:
        open_stores(app, db)
        # Edits, reactions, replies and pins of the exported messages (the API's fields).
        ensure_relations(app)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            hs = Homeserver(
                config["homeserver.address"], config["appservice.as_token"], session,
                retry_budget=float(config["homeserver.retry_budget"]),
            )  # fmt: skip
            app[HOMESERVER] = hs
            app[MATRIX] = MatrixClient(hs, config["appservice.id"], app[IDS].bot_mxid)
            yield app
    finally:
        await db.stop()


async def find_conversation(app: web.Application, target: str) -> Conversation | None:
    """A conversation id, or a project id (its project room)."""
    if conversation := await app[CONVERSATIONS].get(target):
        return conversation
    project = await app[PROJECTS].get(target)
    if project is None or not project.room_id:
        return None
    return await app[CONVERSATIONS].get_by_room(project.room_id)


async def reader_of(app: web.Application, conversation: Conversation) -> str | None:
    """Who reads the room: the bot where it is joined (project rooms), else a joined puppet."""
    members = await app[ROOM_MEMBERS].of_room(conversation.room_id)
    joined = [mxid for mxid, membership in members.items() if membership == "join"]
    bot = app[IDS].bot_mxid
    if bot in joined:
        return bot
    puppets = sorted(m for m in joined if app[IDS].crm_user_id_of(m) is not None)
    return puppets[0] if puppets else None


async def export(app: web.Application, conversation: Conversation, out: IO[str]) -> int:
    service = ChatService(app)
    reader = await reader_of(app, conversation)
    if reader is None:
        raise LookupError("no puppet of this bridge is joined to the room, so none can read it")
    expected = await app[EVENT_INDEX].count(conversation.room_id)
    written = 0
    progress = Progress(
        TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=False,
    )  # fmt: skip
    with progress:
        task = progress.add_task("export", total=max(expected, 1))
        async for batch in whole_history(service, conversation, reader):
            for message in batch:
                out.write(json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n")
            written += len(batch)
            # The index counts every message event; a redacted one exports nothing.
            progress.update(task, completed=written, total=max(expected, written, 1))
        progress.update(task, total=max(written, 1), completed=max(written, 1))
    return written


async def export_command(config: Config, args: argparse.Namespace) -> int:
    if args.format not in FORMATS:
        print(f"Unknown format {args.format!r}; use one of {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    async with offline_app(config) as app:
        conversation = await find_conversation(app, args.target)
        if conversation is None:
            print(f"No conversation or project with id {args.target!r}", file=sys.stderr)
            return 2
        with contextlib.ExitStack() as files:
            out: IO[str] = sys.stdout
            if args.output:
                opened = await asyncio.to_thread(Path(args.output).open, "w", encoding="utf-8")
                out = files.enter_context(opened)
            try:
                count = await export(app, conversation, out)
            except LookupError as e:
                print(f"Cannot export {args.target}: {e}", file=sys.stderr)
                return 1
            except (HomeserverUnavailable, MatrixError) as e:
                print(f"The homeserver failed the export: {e}", file=sys.stderr)
                return 1
    where = args.output or "stdout"
    print(
        f"Exported {count} message(s) of {conversation.conversation_id} to {where}", file=sys.stderr
    )
    return 0
