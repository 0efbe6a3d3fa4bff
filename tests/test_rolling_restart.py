"""A rolling deploy of the process that receives transactions: SIGTERM, then start again,
several times during a burst from a Matrix user (matrix-nio, as Element) with edits and
deletes, sockets on that process and on a facade process.

The facade's sockets get every message, edit and delete exactly once (or a ``resync`` for
the conversation, after which their catch-up from the newest cursor completes them); the
member's sockets stay in the conversation throughout; SIGTERM stops the receiving process
within its drain bound even with sockets connected. Short version in ``make test``; the
issue's 3,000 messages at 100/s with six restarts in ``make soak``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nio import AsyncClient, RoomRedactResponse, RoomSendResponse

from bridge.ids import message_id_for_event
from tests.conftest import unique
from tests.fault_support import FaultStack, fault_stack
from tests.fault_traffic import Chat, duplicated, join_when_invited
from tests.helpers import eventually, matrix_user
from tests.realtime_support import Recorder, conversation_of

pytestmark = pytest.mark.integration

# SIGTERM → exit: the drain bound (bridge/realtime, DRAIN_S 3 s + closing sockets 1 s) plus
# the process's own exit; measured from outside, on a loaded machine.
STOP_BOUND_S = 7.0


async def _stop_timed(fs: FaultStack) -> float:
    proc = fs.bridge.proc
    assert proc is not None
    started = time.monotonic()
    proc.terminate()
    await asyncio.to_thread(proc.wait, 30)
    return time.monotonic() - started


async def _send(client: AsyncClient, room_id: str, body: str, txn: str) -> str:
    """Send like Element, retried with the same transaction id until Synapse accepts it."""
    for _ in range(20):
        resp = await client.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": body}, tx_id=txn
        )
        if isinstance(resp, RoomSendResponse):
            return resp.event_id
        await asyncio.sleep(0.5)
    raise AssertionError(f"Synapse refused {body!r}")


async def _edit(client: AsyncClient, room_id: str, event_id: str, body: str, txn: str) -> None:
    content = {
        "msgtype": "m.text",
        "body": f"* {body}",
        "m.new_content": {"msgtype": "m.text", "body": body},
        "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
    }
    for _ in range(20):
        resp = await client.room_send(room_id, "m.room.message", content, tx_id=txn)
        if getattr(resp, "event_id", None):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"Synapse refused the edit of {event_id}")


async def _redact(client: AsyncClient, room_id: str, event_id: str, txn: str) -> None:
    for _ in range(20):
        if isinstance(await client.room_redact(room_id, event_id, tx_id=txn), RoomRedactResponse):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"Synapse refused the redaction of {event_id}")


async def rolling_restart(
    fs: FaultStack, *, total: int, rate: float, restarts: int
) -> dict[str, Any]:
    facade = await fs.facade("facade").start()
    carol = await matrix_user(fs.synapse, unique("carol"))
    try:
        return await _run(fs, facade, carol, total=total, rate=rate, restarts=restarts)
    finally:
        await carol.close()
        facade.stop()


async def _run(
    fs: FaultStack, facade: Any, carol: AsyncClient, *, total: int, rate: float, restarts: int
) -> dict[str, Any]:
    bob_id = await fs.directory.user("Bob Member")
    carol_id = await fs.directory.user("Carol Element", matrix_id=carol.user_id)
    project = await fs.directory.project(unique("rr"), "Rolling", [bob_id, carol_id], bob_id)
    cid, room_id = conversation_of(project), project["roomId"]
    await join_when_invited(carol, room_id)
    on_facade = [await Recorder(f"bob@facade{i}").connect(facade.url, fs.token(bob_id))
                 for i in range(2)]  # fmt: skip
    on_receiver = await Recorder("bob@receiver").connect(fs.url, fs.token(bob_id))

    bodies = [f"rolling {i:04d}" for i in range(total)]
    event_ids: dict[str, str] = {}
    edited = {b: f"edited {b}" for b in bodies[5::10]}
    deleted = set(bodies[7::15])
    edited_to = set(edited.values())
    limit = asyncio.Semaphore(16)

    async def one(i: int, body: str, start: float) -> None:
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        async with limit:
            event_id = await _send(carol, room_id, body, f"m-{body}")
            event_ids[body] = event_id
            if body in edited:
                await _edit(carol, room_id, event_id, edited[body], f"e-{body}")
            if body in deleted:
                await _redact(carol, room_id, event_id, f"r-{body}")

    stops: list[float] = []

    async def restarter(start: float) -> None:
        span = total / rate
        for n in range(restarts):
            await asyncio.sleep(
                max(0.0, start + span * (n + 1) / (restarts + 1) - time.monotonic())
            )
            stops.append(await _stop_timed(fs))
            await fs.bridge.start()

    start = time.monotonic()
    await asyncio.wait_for(
        asyncio.gather(*(one(i, b, start) for i, b in enumerate(bodies)), restarter(start)),
        timeout=total / rate * 4 + restarts * 40 + 60,
    )

    # A message deleted at once may be gone from the index before a process delivers it.
    expected = {event_ids[b] for b in bodies if b not in deleted}
    expected_deleted = {_message_id(event_ids[b]) for b in deleted}

    def settled() -> bool:
        # Deletes only of messages the socket was shown: one redacted before the homeserver
        # pushed it never was a message here, and no delete comes for it.
        for s in on_facade:
            shown = {_message_id(e) for e in _events(s, cid)}
            if not set(_events(s, cid)) >= expected or not set(_deleted(s, cid)) >= (
                expected_deleted & shown
            ):
                return False
        return True

    try:
        await eventually(lambda: asyncio.sleep(0, settled()), timeout=60, interval=0.5)
    except AssertionError:
        pass  # reported below
    report: dict[str, Any] = {"stops": [round(s, 2) for s in stops]}
    async with aiohttp.ClientSession() as session:
        chat = Chat(session, facade.url, fs.token(bob_id))
        for sock in on_facade:
            live = _events(sock, cid)
            resyncs = sock.of("resync", lambda d: d.get("conversationId") == cid)
            report[sock.name] = {"live": len(live), "resyncs": len(resyncs)}
            assert not duplicated(live), f"{sock.name} got twice: {duplicated(live)[:10]}"
            seen = set(live)
            if resyncs:  # told to refetch: the catch-up from its newest cursor completes it
                newest = sock.of("new_message", lambda m: m["conversationId"] == cid)[-1]
                seen |= {m["eventId"] for m in await chat.catch_up(cid, newest["cursor"])}
            missing = sorted(expected - seen)
            assert not missing, f"{sock.name} missing {len(missing)} of {len(expected)}"
            # Deletes and edits of the messages this socket was shown. (One deleted before
            # the homeserver pushed it comes redacted: never a message, nothing to delete.)
            shown = {m["eventId"]: m for m in sock.of("new_message")}
            deletes = Counter(_deleted(sock, cid))
            assert all(n == 1 for n in deletes.values()), f"{sock.name} deletes twice"
            missed = sorted(
                b for b in deleted
                if event_ids[b] in shown and _message_id(event_ids[b]) not in deletes
            )  # fmt: skip
            assert resyncs or not missed, f"{sock.name} missed deletes of {missed}"
            edits = Counter(
                m["content"] for m in sock.of("message_update") if m["content"] in edited_to
            )
            assert all(n == 1 for n in edits.values()), f"{sock.name} edits twice: {edits}"
            unedited = sorted(
                b for b in edited
                if event_ids[b] in shown and shown[event_ids[b]]["content"] != edited[b]
                and edited[b] not in edits
            )  # fmt: skip
            assert resyncs or not unedited, f"{sock.name} missed edits of {unedited}"
            report[sock.name]["deletes"] = len(deletes)
            report[sock.name]["edits"] = len(edits)
            # The member's sockets stayed in the conversation (never taken out by the gate).
            assert sock.client.connected
    assert all(s <= STOP_BOUND_S for s in stops), f"SIGTERM took {stops} s"
    await on_receiver.close()
    for sock in on_facade:
        await sock.close()
    print(f"rolling restart: {total} messages at {rate}/s, {restarts} restarts: {report}")
    return report


def _events(sock: Recorder, cid: str) -> list[str]:
    return [m["eventId"] for m in sock.of("new_message", lambda m: m["conversationId"] == cid)]


def _deleted(sock: Recorder, cid: str) -> list[str]:
    return [
        d["messageId"] for d in sock.of("message_deleted", lambda d: d["conversationId"] == cid)
    ]


def _message_id(event_id: str) -> str:
    return message_id_for_event(event_id)


async def test_rolling_restart_of_the_receiver(tmp_path: Path) -> None:
    async with fault_stack(tmp_path, redis="private") as fs:
        await rolling_restart(fs, total=240, rate=40, restarts=2)


@pytest.mark.soak
@pytest.mark.timeout(1500)
async def test_rolling_restart_of_the_receiver_3000(tmp_path: Path) -> None:
    async with fault_stack(tmp_path, redis="private") as fs:
        await rolling_restart(fs, total=3000, rate=100, restarts=6)
