"""Kill the bridge (the process receiving transactions) with SIGKILL during a burst, restart
it: nothing is lost or doubled, and a client that reconnects with its cursor ends with every
message exactly once.

Half of the burst goes through ``POST /api/chat/send`` with ``clientMessageId`` (a send that
failed is retried after the restart with the same id), half comes from a plain Matrix user
(matrix-nio) linked to a CRM user, who keeps talking to Synapse while the bridge is down.
The short version runs in ``make test``; the 2,000-message one in ``make soak``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.db.unread import UNREAD_CAP
from tests.conftest import unique
from tests.fault_support import FaultStack, fault_stack
from tests.fault_traffic import (
    RETRYABLE,
    Chat,
    FaultReport,
    duplicated,
    join_when_invited,
    matrix_send,
    merged,
    room_timeline,
    stuck_appservice_events,
)
from tests.helpers import eventually, matrix_user
from tests.realtime_support import Recorder, conversation_of


async def kill_during_burst(
    fs: FaultStack, *, rest: int, matrix: int, rest_workers: int, matrix_workers: int
) -> FaultReport:
    report = FaultReport(f"kill -9 bridge during {rest + matrix}-message burst")
    directory, url = fs.directory, fs.url
    carol_mx = await matrix_user(fs.synapse, unique("carol"))
    alice_id = await directory.user("Alice Burst")
    bob_id = await directory.user("Bob Reader")
    carol_id = await directory.user("Carol Element", matrix_id=carol_mx.user_id)
    project = await directory.project(unique("p"), "Burst", [alice_id, bob_id, carol_id], alice_id)
    cid, room_id = conversation_of(project), project["roomId"]
    await join_when_invited(carol_mx, room_id)

    from_rest = [f"rest {i:04d}" for i in range(rest)]
    from_matrix = [f"matrix {i:04d}" for i in range(matrix)]
    expected = from_rest + from_matrix
    report.sent = len(expected)
    up = asyncio.Event()
    up.set()
    answered = 0
    accepted: list[float] = []
    first = await Recorder("bob").connect(url, fs.token(bob_id))
    second: Recorder | None = None
    async with aiohttp.ClientSession() as session:
        alice = Chat(session, url, fs.token(alice_id))
        bob = Chat(session, url, fs.token(bob_id))
        rest_queue, matrix_queue = list(from_rest), list(from_matrix)
        # Before the burst, from the reader (so not unread for him): the walk of the live
        # order below starts from it.
        status, opening = await bob.send(cid, "opening")
        assert status == 201, opening

        async def rest_worker() -> None:
            nonlocal answered
            while rest_queue:
                content = rest_queue.pop(0)
                for _ in range(200):
                    await up.wait()
                    status, body = await alice.send(cid, content, client_message_id=content)
                    report.answers[status] += 1
                    if status == 201:
                        answered += 1
                        accepted.append(time.monotonic())
                        break
                    assert status in RETRYABLE, (status, body)
                    report.retried += 1
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError(f"{content} was never accepted")

        async def matrix_worker(n: int) -> None:
            while matrix_queue:
                content = matrix_queue.pop(0)
                await matrix_send(carol_mx, room_id, content, txn_id=f"{n}-{content}")

        workers = [asyncio.create_task(rest_worker()) for _ in range(rest_workers)]
        workers += [asyncio.create_task(matrix_worker(n)) for n in range(matrix_workers)]
        try:
            # The kill: in the middle of the burst, with sends in flight.
            async def halfway() -> bool:
                return answered >= rest // 2 and len(first.of("new_message")) >= 3

            await eventually(halfway, timeout=300, interval=0.02)
            fs.bridge.kill()
            up.clear()  # the event loop did not run in between: no send saw the bridge up
            killed = time.monotonic()
            live_before = list(first.of("new_message"))
            cursor = live_before[-1]["cursor"]
            await asyncio.sleep(1)  # the Matrix user keeps talking meanwhile
            await fs.bridge.start()
            restarted = time.monotonic()
            report.extra["bridge_down"] = f"{restarted - killed:.1f}s"
            up.set()  # unanswered sends are retried with the same clientMessageId

            # Bob reconnects: buffer live events, fetch after his cursor, merge by _id
            # (docs/realtime.md, "Gap-free reconnect").
            second = await Recorder("bob again").connect(url, fs.token(bob_id))
            fetched = await bob.catch_up(cid, cursor)
            await asyncio.wait_for(asyncio.gather(*workers), timeout=900)
            sent_all = time.monotonic()

            def socket_view() -> dict[str, dict[str, Any]]:
                assert second is not None
                return merged(live_before, fetched, second.of("new_message"))

            async def complete() -> bool:
                return {m["content"] for m in socket_view().values()} >= set(expected)

            with_timeout = max(30.0, report.sent / 20)
            try:
                await eventually(complete, timeout=with_timeout, interval=0.2)
            except AssertionError:
                pass  # counted below
            # Recovered: from the kill to the first send the restarted bridge accepted.
            report.time_to_recover = min(t for t in accepted if t > restarted) - killed
            report.extra["complete_after_last_send"] = f"{time.monotonic() - sent_all:.1f}s"

            view = [m["content"] for m in socket_view().values()]
            report.socket_missing = sorted(set(expected) - set(view))
            # A message twice in the merged view (two _ids), or one socket getting an _id
            # twice, is a duplicate delivery.
            report.socket_duplicated = duplicated(view) + [
                f"{sock.name}:{i}"
                for sock in (first, second)
                for i in duplicated(m["_id"] for m in sock.of("new_message"))
            ]
            report.extra["live_before_kill"] = len(live_before)
            report.extra["caught_up"] = len(fetched)
            report.extra["live_after"] = len(second.of("new_message"))

            held = await room_timeline(
                fs.synapse.url, fs.config["appservice.as_token"], room_id, {"m.room.message"}
            )
            report.check_history(expected, [e["content"].get("body") for e in held])
            # The same history as a frontend pages it back (page=1, then before=).
            history = await alice.history(cid)
            walked = [m["content"] for m in history]
            report.extra["facade_history_missing"] = sorted(set(expected) - set(walked))
            report.extra["facade_history_duplicated"] = duplicated(walked)
            # The live order (docs/api.md, "Order"): after= from the first message, the
            # walk a reconnecting client does; it ends on the newest message, lastMessage.
            live = [opening, *await alice.catch_up(cid, opening["_id"])]
            live_walked = [m["content"] for m in live]
            report.extra["live_order_missing"] = sorted(set(expected) - set(live_walked))
            report.extra["live_order_duplicated"] = duplicated(live_walked)

            # The bridge's index has every message too (redelivered transactions): Bob's
            # unread count, served from it, counts them all; lastMessage is the newest in
            # the live order.
            async def listed_right() -> dict[str, Any] | None:
                conversation = await bob.conversation(cid)
                right = (
                    conversation["unreadCount"] == min(len(expected), UNREAD_CAP)
                    and (conversation["lastMessage"] or {}).get("_id") == live[-1]["_id"]
                )
                return conversation if right else None

            try:
                await eventually(listed_right, timeout=30, interval=0.5)
            except AssertionError:
                pass
            # Read after the wait: what Synapse still holds and never sent us.
            stuck = stuck_appservice_events(fs.synapse.data_dir)
            if stuck.get("txns"):
                report.extra["synapse_undelivered_txns"] = stuck
            conversation = await bob.conversation(cid)
            report.extra["unreadCount"] = conversation["unreadCount"]
            report.extra["lastMessage_ok"] = (conversation["lastMessage"] or {}).get("_id") == live[
                -1
            ]["_id"]
        finally:
            for task in workers:
                task.cancel()
            await first.close()
            if second is not None:
                await second.close()
            await carol_mx.close()
    print(report.line())
    return report


def assert_clean(report: FaultReport) -> None:
    assert not report.lost, f"lost {report.lost[:20]} ({report.line()})"
    assert not report.duplicated, f"duplicated {report.duplicated[:20]} ({report.line()})"
    assert not report.socket_duplicated, f"socket duplicated {report.socket_duplicated[:20]}"
    assert not report.extra["facade_history_duplicated"], report.line()
    assert not report.extra["facade_history_missing"], report.line()  # read from Synapse
    stranded = report.extra.get("synapse_undelivered_txns") or {}
    held = _stranded_events(stranded)
    # What never reached the bridge (sockets, the index's live order), no more of it than
    # Synapse still holds in transactions it will not send: the race below, by name.
    unseen = set(report.socket_missing) | set(report.extra.get("live_order_missing") or [])
    if unseen and len(unseen) <= held:
        pytest.xfail(f"Synapse stranded an appservice transaction: {report.line()}")
    assert not report.socket_missing, f"socket missing {report.socket_missing[:20]}"
    counted = min(report.sent, UNREAD_CAP)  # unreadCount stops at its display cap ("99+")
    if report.extra["unreadCount"] != counted and held:
        # Synapse's own race (appservice/scheduler.py: a transaction stored while the service
        # was down, then the service marked up with nobody sending it): the bridge never got
        # those events, so its index cannot count them. Known and documented (README, "Fault
        # suite"); every other check above still holds. Anything else fails.
        pytest.xfail(f"Synapse stranded an appservice transaction: {report.line()}")
    assert report.extra["unreadCount"] == counted, report.line()
    assert report.extra["lastMessage_ok"], report.line()


def _stranded_events(stuck: dict[str, Any]) -> int:
    """Events of transactions left in Synapse's table while it counts the appservice up."""
    if not stuck.get("txns") or not set((stuck.get("state") or {}).values()) <= {"up"}:
        return 0
    return sum(len(events) for events in stuck["txns"].values())


def assert_facade_history_complete(report: FaultReport) -> None:
    assert not report.extra["facade_history_missing"], report.line()
    assert not report.extra["live_order_missing"], report.line()
    assert not report.extra["live_order_duplicated"], report.line()


async def test_kill_during_burst_loses_nothing(tmp_path: Path) -> None:
    async with fault_stack(tmp_path, redis="private") as fs:
        report = await kill_during_burst(fs, rest=20, matrix=12, rest_workers=4, matrix_workers=2)
    assert_clean(report)
    assert_facade_history_complete(report)


@pytest.mark.soak
@pytest.mark.timeout(1500)
async def test_kill_during_2000_message_burst_loses_nothing(tmp_path: Path) -> None:
    overrides = {"api.rate_limit.send_requests": 10000, "api.rate_limit.requests": 10000}
    async with fault_stack(tmp_path, redis="private", **overrides) as fs:
        report = await kill_during_burst(
            fs, rest=1000, matrix=1000, rest_workers=6, matrix_workers=3
        )
    assert_clean(report)
    assert_facade_history_complete(report)
