"""Restart the bridge's PostgreSQL under traffic: sends during the outage answer 503
``M_SERVICE_UNAVAILABLE`` (never 500), the pool reconnects by itself, and every message sent,
retried with its ``clientMessageId``, is in the history exactly once.

The bridge's database is a private cluster (``fault_stack(bridge_db="private")``): the
machine's PostgreSQL, which the other tests share, is never touched.
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
from tests.fault_traffic import Chat, FaultReport, duplicated, room_timeline
from tests.helpers import eventually
from tests.realtime_support import conversation_of


async def restart_under_traffic(
    fs: FaultStack, *, messages: int, workers: int, down: float, mode: str
) -> tuple[FaultReport, list[dict[str, Any]]]:
    assert fs.postgres is not None
    report = FaultReport(f"PostgreSQL stop -m {mode}, {down:.0f}s down, {messages} sends")
    alice_id = await fs.directory.user("Alice Sender")
    bob_id = await fs.directory.user("Bob Reader")
    project = await fs.directory.project(unique("p"), "Outage", [alice_id, bob_id], alice_id)
    cid = conversation_of(project)
    expected = [f"pg {i:04d}" for i in range(messages)]
    report.sent = messages
    refusals: list[dict[str, Any]] = []  # (time, status, body) of every non-201 answer
    accepted: list[float] = []
    queue = list(expected)
    async with aiohttp.ClientSession() as session:
        alice = Chat(session, fs.url, fs.token(alice_id))
        bob = Chat(session, fs.url, fs.token(bob_id))

        async def worker() -> None:
            while queue:
                content = queue.pop(0)
                for _ in range(300):
                    status, body = await alice.send(cid, content, client_message_id=content)
                    report.answers[status] += 1
                    if status == 201:
                        accepted.append(time.monotonic())
                        break
                    refusals.append({"at": time.monotonic(), "status": status, "body": body})
                    report.retried += 1
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError(f"{content} was never accepted")

        tasks = [asyncio.create_task(worker()) for _ in range(workers)]
        try:
            await eventually(lambda: _at_least(accepted, messages // 3), timeout=120)
            # Runs pg_ctl in a thread: the sends go on while the server is down.
            stopping = time.monotonic()
            _, started = await fs.postgres.restart(down=down, mode=mode)
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=600)
        finally:
            for task in tasks:
                task.cancel()
        unavailable = [r["at"] for r in refusals if r["status"] == 503]
        if unavailable:
            report.time_to_503 = min(unavailable) - stopping
        # Recovered: the first send accepted after the server is back, with no refusal after.
        after = [t for t in accepted if t > started]
        report.time_to_recover = (min(after) - started) if after else None
        late = [r for r in refusals if r["at"] > (min(after) if after else started)]
        report.extra["refused_after_recovery"] = len(late)
        report.extra["down"] = f"{started - stopping:.1f}s"

        held = await room_timeline(
            fs.synapse.url, fs.config["appservice.as_token"], project["roomId"], {"m.room.message"}
        )
        report.check_history(expected, [e["content"].get("body") for e in held])
        history = [m["content"] for m in await alice.history(cid)]
        report.extra["facade_history_missing"] = len(set(expected) - set(history))
        report.extra["facade_history_duplicated"] = len(duplicated(history))

        # Transactions refused during the outage are redelivered: the index catches up.
        async def unread() -> bool:
            return (await bob.conversation(cid))["unreadCount"] == min(messages, UNREAD_CAP)

        try:
            await eventually(unread, timeout=90, interval=0.5)
        except AssertionError:
            pass
        report.extra["unreadCount"] = (await bob.conversation(cid))["unreadCount"]
    print(report.line())
    return report, refusals


def assert_clean(report: FaultReport, refusals: list[dict[str, Any]]) -> None:
    assert report.answers[500] == 0, [r for r in refusals if r["status"] == 500][:3]
    assert set(report.answers) <= {201, 503, 0}, report.line()
    for refusal in refusals:
        if refusal["status"] == 503:
            body = refusal["body"]
            assert body["errcode"] == "M_SERVICE_UNAVAILABLE", body
            assert "database" in body["message"].lower() or "try again" in body["message"], body
    assert report.answers[503] > 0, f"the outage was not seen: {report.line()}"
    assert report.extra["refused_after_recovery"] == 0, report.line()
    assert not report.lost, report.lost
    assert not report.duplicated, report.duplicated
    assert report.extra["facade_history_missing"] == 0, report.line()
    assert report.extra["facade_history_duplicated"] == 0, report.line()
    # unreadCount stops at its display cap ("99+"); below it, every message is counted.
    assert report.extra["unreadCount"] == min(report.sent, UNREAD_CAP), report.line()


async def test_postgres_restart_under_traffic_answers_503_then_loses_nothing(
    tmp_path: Path,
) -> None:
    async with fault_stack(tmp_path, bridge_db="private", redis="private") as fs:
        report, refusals = await restart_under_traffic(
            fs, messages=60, workers=4, down=2.0, mode="fast"
        )
    assert_clean(report, refusals)


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_postgres_crash_under_heavy_traffic_loses_nothing(tmp_path: Path) -> None:
    overrides = {"api.rate_limit.send_requests": 10000, "api.rate_limit.requests": 10000}
    async with fault_stack(tmp_path, bridge_db="private", redis="private", **overrides) as fs:
        report, refusals = await restart_under_traffic(
            fs, messages=600, workers=8, down=3.0, mode="immediate"
        )
    assert_clean(report, refusals)


async def _at_least(values: list[Any], n: int) -> bool:
    return len(values) >= n
