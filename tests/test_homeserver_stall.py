"""A homeserver stall (Synapse SIGSTOPped) under a stream of sends.

While Synapse does not answer, every send answers 503 ``M_HOMESERVER_UNAVAILABLE`` within
2 s (none hangs) and readiness turns 503; after SIGCONT readiness and sends come back within
5 s. Every send that got a 503 is retried with its clientMessageId, and Synapse's history
then holds every message exactly once: a send that timed out but reached Synapse is not
duplicated by its retry.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import unique
from tests.fault_support import FaultStack, fault_stack
from tests.realtime_support import Recorder, conversation_of

UNAVAILABLE = "M_HOMESERVER_UNAVAILABLE"
# Long enough to measure a hang instead of cutting it short; every loop here is bounded.
CLIENT_TIMEOUT = 45.0


@dataclass
class Attempt:
    content: str
    door: str  # "rest" or "socket"
    started: float  # seconds since the run began
    latency: float
    status: int  # HTTP status; for the socket 201 (message) or 503/0 (error body)
    errcode: str | None


@dataclass
class Run:
    stopped_at: float = 0.0
    resumed_at: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    ready: list[tuple[float, int]] = field(default_factory=list)
    # Traffic stops then (monotonic); set once the homeserver is back.
    ends_at: float = float("inf")

    def during_stall(self) -> list[Attempt]:
        return [a for a in self.attempts if self.stopped_at <= a.started < self.resumed_at]

    def first_not_ready(self) -> float | None:
        times = [t for t, s in self.ready if t >= self.stopped_at and s != 200]
        return times[0] - self.stopped_at if times else None

    def ready_again(self) -> float | None:
        times = [t for t, s in self.ready if t >= self.resumed_at and s == 200]
        return times[0] - self.resumed_at if times else None

    def sends_again(self) -> float | None:
        """Seconds from SIGCONT to the first 201 answered after it."""
        done = [a.started + a.latency for a in self.attempts if a.status == 201]
        done = [t for t in done if t >= self.resumed_at]
        return min(done) - self.resumed_at if done else None


async def _rest_sender(
    session: aiohttp.ClientSession, fs: FaultStack, token: str, cid: str, name: str,
    run: Run, t0: float, interval: float,
) -> None:  # fmt: skip
    for n in range(10_000):  # bounded, and ends at run.ends_at
        now = time.monotonic()
        if now >= run.ends_at:
            return
        content = f"{name}-{n:04d}"
        status, errcode = await _post(session, fs.url, token, cid, content)
        run.attempts.append(
            Attempt(content, "rest", now - t0, time.monotonic() - now, status, errcode)
        )
        await asyncio.sleep(interval)


async def _post(
    session: aiohttp.ClientSession, url: str, token: str, cid: str, content: str
) -> tuple[int, str | None]:
    body = {"conversationId": cid, "content": content, "clientMessageId": content}
    try:
        async with session.post(
            url + "/api/chat/send",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT),
        ) as resp:
            answer = await resp.json()
            return resp.status, answer.get("errcode") if resp.status >= 400 else None
    except TimeoutError:
        return 0, "client timeout"


async def _socket_sender(
    sock: Recorder, cid: str, name: str, run: Run, t0: float, interval: float
) -> None:
    for n in range(10_000):  # bounded, and ends at run.ends_at
        now = time.monotonic()
        if now >= run.ends_at:
            return
        content = f"{name}-{n:04d}"
        status, errcode = await _emit(sock, cid, content)
        run.attempts.append(
            Attempt(content, "socket", now - t0, time.monotonic() - now, status, errcode)
        )
        await asyncio.sleep(interval)


async def _emit(sock: Recorder, cid: str, content: str) -> tuple[int, str | None]:
    data = {"conversationId": cid, "content": content, "clientMessageId": content}
    try:
        ack = await sock.call("send_message", data, timeout=CLIENT_TIMEOUT)
    except TimeoutError:
        return 0, "client timeout"
    if isinstance(ack, dict) and "_id" in ack:
        return 201, None
    errcode = ack.get("errcode") if isinstance(ack, dict) else None
    return (503 if errcode == UNAVAILABLE else 0), errcode or str(ack)


async def _watch_ready(session: aiohttp.ClientSession, url: str, run: Run, t0: float) -> None:
    for _ in range(10_000):  # bounded, and ends at run.ends_at
        if time.monotonic() >= run.ends_at:
            return
        try:
            async with session.get(
                url + "/health/ready", timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                status = resp.status
        except (TimeoutError, aiohttp.ClientError):
            status = 0
        run.ready.append((time.monotonic() - t0, status))
        await asyncio.sleep(0.1)


async def _history(session: aiohttp.ClientSession, fs: FaultStack, room_id: str) -> list[str]:
    """Every message body in the room, read from Synapse itself (as the bridge bot)."""
    bodies: list[str] = []
    params = {"dir": "b", "limit": "500"}
    headers = {"Authorization": f"Bearer {fs.config['appservice.as_token']}"}
    for _ in range(100):  # bounded: 50,000 events
        async with session.get(
            f"{fs.synapse.url}/_matrix/client/v3/rooms/{room_id}/messages",
            params=params, headers=headers,
        ) as resp:  # fmt: skip
            assert resp.status == 200, await resp.text()
            page = await resp.json()
        bodies += [
            e["content"]["body"] for e in page["chunk"]
            if e["type"] == "m.room.message" and "body" in e.get("content", {})
        ]  # fmt: skip
        if not page["chunk"] or "end" not in page:
            return bodies
        params["from"] = page["end"]
    raise AssertionError("history too long")


async def stall_under_sends(
    tmp_path: Path,
    *,
    stall: float,
    rest_senders: int,
    interval: float,
    after: float = 7.0,
    fault: str = "pause",
) -> None:
    """``fault`` "pause": SIGSTOP for ``stall`` s, then SIGCONT. "stop": Synapse shut down
    for ``stall`` s, then started again (the run resumes when it answers again)."""
    async with fault_stack(tmp_path, synapse_db="postgres", redis=None) as fs:
        users = [await fs.directory.user(f"Sender {i}") for i in range(rest_senders + 1)]
        project = await fs.directory.project(unique("p"), "Stall", users, users[0])
        cid = conversation_of(project)
        tokens = [fs.token(u) for u in users]
        sock = await Recorder("socket sender").connect(fs.url, tokens[-1])
        run = Run()
        traffic: list[asyncio.Task] = []
        async with aiohttp.ClientSession() as session:
            try:
                t0 = time.monotonic()
                warmup = 2.0
                traffic += [
                    asyncio.create_task(
                        _rest_sender(session, fs, tokens[i], cid, f"r{i}", run, t0, interval)
                    )
                    for i in range(rest_senders)
                ]
                traffic.append(
                    asyncio.create_task(_socket_sender(sock, cid, "s", run, t0, interval))
                )
                traffic.append(asyncio.create_task(_watch_ready(session, fs.url, run, t0)))
                await asyncio.sleep(warmup)
                run.stopped_at = time.monotonic() - t0
                if fault == "pause":
                    fs.synapse.pause()
                    try:
                        await asyncio.sleep(stall)
                    finally:
                        fs.synapse.resume()
                else:
                    await asyncio.to_thread(fs.synapse.stop)
                    await asyncio.sleep(stall)
                    fs.synapse.start()
                    await fs.synapse.wait_ready()
                run.resumed_at = time.monotonic() - t0
                run.ends_at = time.monotonic() + after
                await asyncio.gather(*traffic)

                # Every send that did not get a 201 is retried with its clientMessageId.
                # Some of them reached Synapse before the bridge gave up on them: those
                # retries must return the same event, not post a second one.
                retried = [a for a in run.attempts if a.status != 201]
                before = set(await _history(session, fs, project["roomId"]))
                reached = [a for a in retried if a.content in before]
                slots = asyncio.Semaphore(8)

                async def retry(a: Attempt) -> int:
                    async with slots:
                        if a.door == "socket":
                            return (await _emit(sock, cid, a.content))[0]
                        owner = tokens[int(a.content.split("-")[0][1:])]
                        return (await _post(session, fs.url, owner, cid, a.content))[0]

                retry_status = await asyncio.gather(*(retry(a) for a in retried))
                history = await _history(session, fs, project["roomId"])
            finally:
                for task in traffic:
                    task.cancel()
                await sock.close()

        intended = {a.content for a in run.attempts}
        counts = Counter(b for b in history if b in intended)
        lost = sorted(intended - set(counts))
        duplicated = sorted(b for b, n in counts.items() if n > 1)
        stalled = run.during_stall()
        refused = [a for a in stalled if a.status != 201]
        latencies = [a.latency for a in refused] or [0.0]
        print(
            f"\n{fault} {stall:.0f}s: sends during stall {len(stalled)} "
            f"(503: {sum(a.status == 503 for a in stalled)}, "
            f"201: {sum(a.status == 201 for a in stalled)}, "
            f"other: {Counter((a.status, a.errcode) for a in refused if a.status != 503)}); "
            f"time to 503 max {max(latencies):.2f}s p50 {statistics.median(latencies):.2f}s; "
            f"slowest send overall {max(a.latency for a in run.attempts):.2f}s; "
            f"ready non-200 after {run.first_not_ready()}s; "
            f"after SIGCONT ready in {run.ready_again()}s, first 201 in {run.sends_again()}s; "
            f"sends {len(run.attempts)}, retried {len(retried)} "
            f"(of which had reached Synapse: {len(reached)}) "
            f"(201: {retry_status.count(201)}); lost {len(lost)}, duplicated {len(duplicated)}"
        )

        # None hangs: every send, during the stall or not, is answered within 2 s, and the
        # ones the stall refused say why.
        slow = [a for a in run.attempts if a.latency >= 2.0]
        assert not slow, slow[:5]
        assert stalled, "no send during the stall"
        unanswered = [a for a in retried if a.status != 503 or a.errcode != UNAVAILABLE]
        assert not unanswered, unanswered[:5]
        # A send that began 2 s before the resume can only have been refused.
        early = [a for a in stalled if a.started < run.resumed_at - 2.0]
        assert early and all(a.status == 503 for a in early), early[:5]
        not_ready = run.first_not_ready()
        assert not_ready is not None and not_ready < 5.0, run.ready
        ready_again, sends_again = run.ready_again(), run.sends_again()
        assert ready_again is not None and ready_again < 5.0, run.ready
        assert sends_again is not None and sends_again < 5.0
        late = [a for a in run.attempts if a.started >= run.resumed_at + 5.0]
        assert late and all(a.status == 201 for a in late), [a for a in late if a.status != 201]
        assert all(s == 201 for s in retry_status), retry_status
        assert not lost, lost
        if fault == "stop":
            # Known gap: Synapse remembers an appservice's transaction ids in memory only, so
            # a send that reached it just before it went down, retried after its restart,
            # is posted a second time. Only those may be doubled.
            assert set(duplicated) <= {a.content for a in reached}, duplicated
        else:
            assert not duplicated, duplicated


async def test_stall_sends_fail_fast_and_recover(tmp_path: Path) -> None:
    await stall_under_sends(tmp_path, stall=9.0, rest_senders=3, interval=0.25)


@pytest.mark.soak
async def test_stall_30s_under_load(tmp_path: Path) -> None:
    await stall_under_sends(tmp_path, stall=30.0, rest_senders=8, interval=0.05)


@pytest.mark.soak
async def test_synapse_down_40s_under_load(tmp_path: Path) -> None:
    await stall_under_sends(tmp_path, stall=40.0, rest_senders=4, interval=0.1, fault="stop")
