"""The delivery log through crashes at its named failpoints (bridge/failpoints.py): a facade
process is killed with SIGKILL between index and announcement (``log.indexed``), between
announcement and mark (``log.published``), or in its delivery lane before an emit
(``log.lane``), during a burst sent through two facade processes with sockets on both.

Every socket ends with every message exactly once: a socket on the surviving facade gets
each live, once; the killed facade's socket, its live messages plus the catch-up from its
newest cursor (docs/realtime.md, "The delivery log"), with no message in both and none
twice live. Short versions in ``make test``; the 2,000-message ones in ``make soak``.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.failpoints import ENV
from tests.conftest import unique
from tests.fault_support import FaultStack, fault_stack
from tests.fault_traffic import RETRYABLE, Chat, duplicated
from tests.helpers import eventually
from tests.realtime_support import Recorder, conversation_of

pytestmark = pytest.mark.integration

LIMITS = {"api.rate_limit.send_requests": 100000, "api.rate_limit.requests": 100000}


def contents(socket: Recorder, cid: str) -> list[str]:
    return [m["content"] for m in socket.of("new_message", lambda m: m["conversationId"] == cid)]


async def burst_through_a_crash(
    fs: FaultStack, point: str, total: int, kill_at: int, tag: str = ""
) -> None:
    a, b = fs.facade(f"facade-a{tag}"), fs.facade(f"facade-b{tag}")
    a.env = {ENV: f"{point}@{kill_at}"}
    await asyncio.gather(a.start(), b.start())
    try:
        await _burst(fs, a, b, point, total)
    finally:
        a.stop()
        b.stop()


async def _burst(fs: FaultStack, a: Any, b: Any, point: str, total: int) -> None:
    alice_id = await fs.directory.user("Alice Sender")
    bob_id = await fs.directory.user("Bob Reader")
    project = await fs.directory.project(unique("fp"), "Failpoints", [alice_id, bob_id], alice_id)
    cid = conversation_of(project)
    on_a = await Recorder("bob@a").connect(a.url, fs.token(bob_id))
    on_b = await Recorder("bob@b").connect(b.url, fs.token(bob_id))
    alice_on_b = await Recorder("alice@b").connect(b.url, fs.token(alice_id))
    expected = [f"{point} {i:04d}" for i in range(total)]
    queue = list(expected)
    async with aiohttp.ClientSession() as session:
        via = {a.url: Chat(session, a.url, fs.token(alice_id)),
               b.url: Chat(session, b.url, fs.token(alice_id))}  # fmt: skip
        turns = itertools.cycle([a.url, b.url])

        async def sender() -> None:
            while queue:
                content = queue.pop(0)
                for _ in range(100):
                    # Half through each facade; once A is dead, B takes the retries (same
                    # clientMessageId: the message is sent once).
                    url = next(turns)
                    if a.proc.poll() is not None:
                        url = b.url
                    status, body = await via[url].send(cid, content, client_message_id=content)
                    if status == 201:
                        break
                    assert status in RETRYABLE, (status, body)
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"{content} was never accepted")

        workers = [asyncio.create_task(sender()) for _ in range(6)]
        try:
            await asyncio.wait_for(asyncio.gather(*workers), timeout=600)
        finally:
            for task in workers:
                task.cancel()
        assert a.proc.poll() is not None, f"the failpoint {point} never fired"

        # The killed facade's socket: its newest cursor, then the documented catch-up.
        live_a = on_a.of("new_message", lambda m: m["conversationId"] == cid)
        cursor = live_a[-1]["cursor"] if live_a else None
        fetched = await via[b.url].catch_up(cid, cursor) if cursor else []

        async def b_has_all() -> bool:
            return set(contents(on_b, cid)) >= set(expected)

        try:
            await eventually(b_has_all, timeout=max(30.0, total / 20), interval=0.2)
        except AssertionError:
            pass  # reported below
        for sock in (on_b, alice_on_b):
            got = contents(sock, cid)
            assert not duplicated(got), f"{sock.name} got twice: {duplicated(got)[:10]}"
            missing = sorted(set(expected) - set(got))
            assert not missing, f"{sock.name} missing {len(missing)}: {missing[:10]}"
        live = [m["content"] for m in live_a]
        caught = [m["content"] for m in fetched]
        assert not duplicated(live), f"bob@a got twice live: {duplicated(live)[:10]}"
        assert not set(live) & set(caught), "the catch-up repeated live messages"
        assert not duplicated(caught)
        missing = sorted(set(expected) - set(live) - set(caught))
        assert not missing, f"bob@a missing after catch-up {len(missing)}: {missing[:10]}"
        print(f"{point}: {total} sent, bob@a {len(live)} live + {len(caught)} caught up")
    for sock in (on_a, on_b, alice_on_b):
        await sock.close()


POINTS = ["log.indexed", "log.published", "log.lane"]


async def test_kill_at_each_failpoint(tmp_path: Path) -> None:
    """One stack, each failpoint in turn (fresh facades and conversation each time)."""
    async with fault_stack(tmp_path, redis="private", **LIMITS) as fs:
        for n, point in enumerate(POINTS):
            await burst_through_a_crash(fs, point, total=100, kill_at=20, tag=str(n))


@pytest.mark.soak
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("point", POINTS)
async def test_kill_at_failpoint_2000(tmp_path: Path, point: str) -> None:
    async with fault_stack(tmp_path, redis="private", **LIMITS) as fs:
        await burst_through_a_crash(fs, point, total=2000, kill_at=250)
