"""A transaction Synapse stranded reaches the bridge all the same (real Synapse on SQLite).

Synapse 1.163 can leave a transaction in ``application_services_txns`` with the appservice
marked ``up`` and no recoverer (``send`` vs ``_Recoverer.retry`` in
synapse/appservice/scheduler.py). The test builds that state on purpose: the bridge is
killed, a message is sent (Synapse stores its transaction and marks the service down),
Synapse is stopped, the service is set back to ``up`` in its database, and Synapse and the
bridge are started again. The bridge's startup ping does not help (Synapse only hurries a
running recoverer), so without gap recovery the message never reaches the sockets. With
it, the bridge sees the skipped id, refuses the next transaction once, and Synapse's
recoverer sends the stored one. When nothing is sent after the stranded one, the bridge's
probe events make the transactions that show the gap and get refused.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from nio import AsyncClient

from bridge.ids import IdMapper, conversation_id_for_room
from tests.conftest import unique
from tests.fault_support import FaultStack, fault_stack
from tests.fault_traffic import (
    Chat,
    join_when_invited,
    matrix_send,
    probe_room,
    stuck_appservice_events,
)
from tests.helpers import eventually, matrix_user
from tests.realtime_support import Recorder

GAP_SECONDS = 1


def _mark_up(data_dir: Path, as_id: str) -> None:
    conn = sqlite3.connect(data_dir / "homeserver.db")
    try:
        conn.execute("UPDATE application_services_state SET state='up' WHERE as_id=?", (as_id,))
        conn.commit()
    finally:
        conn.close()


def _bodies(rec: Recorder) -> list[str]:
    return [m["content"] for m in rec.of("new_message")]


@dataclass
class Stranded:
    carol: AsyncClient
    bob_id: str
    room_id: str
    txns: dict[str, Any]  # Synapse's stored transaction(s): id -> event ids


async def _strand(fs: FaultStack) -> Stranded:
    """One message in a transaction Synapse stored while marked up (the race's outcome),
    the bridge started again after it."""
    as_id = fs.config["appservice.id"]
    carol = await matrix_user(fs.synapse, unique("carol"))
    directory = fs.directory
    bob_id = await directory.user("Bob Reader")
    carol_id = await directory.user("Carol Element", matrix_id=carol.user_id)
    project = await directory.project(unique("p"), "Strand", [bob_id, carol_id], bob_id)
    room_id = project["roomId"]
    await join_when_invited(carol, room_id)
    bob = await Recorder("bob").connect(fs.url, fs.token(bob_id))
    await matrix_send(carol, room_id, "before", unique("t"))
    await bob.wait("new_message", lambda m: m["content"] == "before")
    await bob.close()

    fs.bridge.kill()
    await matrix_send(carol, room_id, "stranded", unique("t"))

    async def stored() -> dict | None:
        found = stuck_appservice_events(fs.synapse.data_dir)
        return found if found.get("txns") and found["state"].get(as_id) == "down" else None

    before = await eventually(stored, timeout=30, interval=0.2)
    fs.synapse.stop()
    _mark_up(fs.synapse.data_dir, as_id)  # the race's outcome: stored, yet "up"
    fs.synapse.start()
    await fs.synapse.wait_ready()
    strand = stuck_appservice_events(fs.synapse.data_dir)
    assert strand["state"][as_id] == "up" and strand["txns"] == before["txns"]
    await fs.bridge.start()
    return Stranded(carol, bob_id, room_id, before["txns"])


def _drained(fs: FaultStack) -> bool:
    left = stuck_appservice_events(fs.synapse.data_dir)
    return not left["txns"] and left["state"][fs.config["appservice.id"]] == "up"


async def _stranded_in_history(fs: FaultStack, s: Stranded) -> None:
    async with aiohttp.ClientSession() as session:
        chat = Chat(session, fs.url, fs.token(s.bob_id))
        history = await chat.history(conversation_id_for_room(s.room_id))
    assert [m["content"] for m in history].count("stranded") == 1


async def test_a_stranded_transaction_is_fetched_by_one_refusal(tmp_path: Path) -> None:
    async with fault_stack(
        tmp_path, synapse_db="sqlite", redis=None, **{"appservice.gap_recovery_seconds": 1}
    ) as fs:
        s = await _strand(fs)
        bob = await Recorder("bob").connect(fs.url, fs.token(s.bob_id))
        try:
            await matrix_send(s.carol, s.room_id, "after 1", unique("t"))
            await bob.wait("new_message", lambda m: m["content"] == "after 1", timeout=60)
            await asyncio.sleep(GAP_SECONDS + 1)
            started = time.monotonic()
            await matrix_send(s.carol, s.room_id, "after 2", unique("t"))

            async def drained() -> bool:
                return _drained(fs)

            # The stored transaction is fetched by the one refusal: Synapse's books empty.
            await eventually(drained, timeout=40, interval=0.2)
            recovered = time.monotonic() - started
            await bob.wait("new_message", lambda m: m["content"] == "after 2", timeout=30)
            assert _bodies(bob).count("after 2") == 1
            # Bob gets "stranded" once: live if the bridge indexed it after his socket
            # entered the room, else in the history his client loads (the startup backfill
            # can find it first; docs/realtime.md, "The delivery log").
            await _stranded_in_history(fs, s)
            assert _bodies(bob).count("stranded") <= 1
            print(f"stranded txn(s) {sorted(s.txns)}: recovered {recovered:.1f} s "
                  "after the next send")  # fmt: skip
        finally:
            await bob.close()
            await s.carol.close()


async def test_a_stranded_last_transaction_is_fetched_with_no_traffic(tmp_path: Path) -> None:
    """The stranded transaction was the last one and nothing is sent after it: no later id
    shows the gap and no transaction comes to be refused. The receiver's probe events (in
    the bot's own room, matrix/probe.py) do both: Synapse's books empty with no traffic."""
    async with fault_stack(
        tmp_path, synapse_db="sqlite", redis=None, **{"appservice.gap_recovery_seconds": 1}
    ) as fs:
        s = await _strand(fs)
        started = time.monotonic()
        try:

            async def drained() -> bool:
                return _drained(fs)

            await eventually(drained, timeout=60, interval=0.2)
            recovered = time.monotonic() - started
            await _stranded_in_history(fs, s)
            # The probe room: the bot's alone, found by its alias; no conversation.
            ids = IdMapper.from_config(fs.config)
            as_token = fs.config["appservice.as_token"]
            probe = await probe_room(fs.synapse.url, as_token, ids)
            assert probe is not None, "no probe room"
            headers = {"Authorization": f"Bearer {as_token}"}
            base = f"{fs.synapse.url}/_matrix/client/v3"
            async with aiohttp.ClientSession(headers=headers) as session:
                path = f"{base}/rooms/{probe}/joined_members"
                async with session.get(path) as resp:
                    assert list((await resp.json())["joined"]) == [ids.bot_mxid]
                path = f"{base}/rooms/{probe}/state/m.room.create/"
                async with session.get(path) as resp:
                    assert (await resp.json())["m.federate"] is False
            async with (
                aiohttp.ClientSession() as session,
                session.get(
                    f"{fs.url}/api/chat/conversations",
                    headers={"Authorization": f"Bearer {fs.token(s.bob_id)}"},
                ) as resp,
            ):
                listed = {c["_id"] for c in await resp.json()}
            assert conversation_id_for_room(probe) not in listed
            print(f"stranded last txn(s) {sorted(s.txns)}: fetched {recovered:.1f} s after start")
        finally:
            await s.carol.close()
