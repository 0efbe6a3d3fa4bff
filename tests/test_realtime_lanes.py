"""Real-time work runs in a lane per conversation: one conversation's slow homeserver look-up
does not hold up another's messages, and what a lane has to drop becomes ``resync``.

The slow look-up is injected at the homeserver seam: the bridge's own HTTP session to the
real Synapse holds every ``GET /profile`` of one Matrix user (an aiohttp trace hook, before
the request goes out), as a homeserver that is slow for that user would.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import socketio
from nio import AsyncClient, RoomSendResponse

from bridge.context import CONFIG, CONVERSATIONS, IDS, MATRIX, ROOM_MEMBERS
from bridge.db.conversation import DIRECT, Conversation
from bridge.db.crm_user import CrmUser
from bridge.realtime import REALTIME
from bridge.realtime.pump import FAILED, OVERFLOW, Lanes
from tests.api_support import crm_user, project_chat, token
from tests.conftest import unique
from tests.helpers import eventually, matrix_user

HELD_S = 8.0  # how long the homeserver "takes" for the slow user's profile
ROUNDS = 6


class Arrivals:
    """A socket that notes when each ``new_message`` (by content) and ``resync`` arrives."""

    def __init__(self) -> None:
        self.client = socketio.AsyncClient(reconnection=False)
        self.at: dict[str, tuple[float, dict[str, Any]]] = {}
        self.resyncs: list[dict[str, Any]] = []

        @self.client.on("new_message")
        async def new_message(data: dict[str, Any]) -> None:
            self.at.setdefault(str(data.get("content")), (time.monotonic(), data))

        @self.client.on("resync")
        async def resync(data: dict[str, Any]) -> None:
            self.resyncs.append(data)

    async def wait(self, content: str, timeout: float = 20) -> tuple[float, dict[str, Any]]:
        async def arrived() -> tuple[float, dict[str, Any]] | None:
            return self.at.get(content)

        return await eventually(arrived, timeout=timeout, interval=0.005)


@asynccontextmanager
async def slow_profile(app: Any, mxid: str) -> AsyncIterator[list[float]]:
    """Hold the bridge's ``GET /profile/<mxid>`` requests for HELD_S; yields their start times."""
    started: list[float] = []

    async def hold(session: Any, ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
        if params.method == "GET" and params.url.path.endswith(f"/profile/{mxid}"):
            started.append(time.monotonic())
            await asyncio.sleep(HELD_S)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(hold)
    trace.freeze()
    session = app[MATRIX].hs.session
    session.trace_configs.append(trace)
    try:
        yield started
    finally:
        session.trace_configs.remove(trace)


async def with_stranger(stack: Any, user: CrmUser) -> tuple[Conversation, AsyncClient]:
    """A conversation of ``user`` and a plain Matrix account (no CRM user: its name comes
    from its profile), in a direct room, where the directory keeps no member list."""
    app = stack.app
    room_id = await app[MATRIX].create_room({"preset": "private_chat"})
    await app[ROOM_MEMBERS].set(room_id, app[IDS].bot_mxid, "join")
    await app[MATRIX].invite(room_id, user.mxid)
    await app[MATRIX].join(room_id, as_user=user.mxid)
    await app[ROOM_MEMBERS].set(room_id, user.mxid, "join")
    conversation = await app[CONVERSATIONS].add(room_id, DIRECT, key=unique("dm"))
    client = await matrix_user(stack.synapse, unique("stranger"))
    await app[MATRIX].invite(room_id, client.user_id)
    await client.join(room_id)
    return conversation, client


async def send(client: AsyncClient, room_id: str, body: str) -> float:
    started = time.monotonic()
    resp = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})
    assert isinstance(resp, RoomSendResponse), resp
    return started


async def latencies(socket: Arrivals, sender: AsyncClient, room_id: str, label: str) -> list[float]:
    """Send ROUNDS messages one after another (not waiting for them to arrive, so a stalled
    lane would hold them all), then the latency of each: send start to the socket."""
    started = {f"{label} {i}": await send(sender, room_id, f"{label} {i}") for i in range(ROUNDS)}
    return [(await socket.wait(body))[0] - at for body, at in started.items()]


async def test_slow_profile_does_not_delay_other_conversations(stack) -> None:
    app = stack.app
    bob = await crm_user(app, "Bob Lanes")
    slow_room, slow_user = await with_stranger(stack, bob)
    fast_room, fast_user = await with_stranger(stack, bob)
    bob_socket = Arrivals()
    await bob_socket.client.connect(
        stack.bridge_url, auth={"token": token(app, bob)}, transports=["websocket"]
    )
    try:
        # Baseline: messages from Matrix in the fast conversation, through the transaction.
        baseline = await latencies(bob_socket, fast_user, fast_room.room_id, "baseline")

        async with slow_profile(app, slow_user.user_id) as lookups:
            # The slow conversation's lane now waits on the homeserver for its sender.
            slow_started = await send(slow_user, slow_room.room_id, "who am I")
            await eventually(lambda: asyncio.sleep(0, bool(lookups)), timeout=10, interval=0.01)
            during = await latencies(bob_socket, fast_user, fast_room.room_id, "during")
            slow_at, slow_message = await bob_socket.wait("who am I", timeout=HELD_S + 5)

        lookup_timeout = float(app[CONFIG]["realtime.lookup_timeout"])
        delay_ms = (statistics.median(during) - statistics.median(baseline)) * 1000
        print(
            f"\nnew_message latency in the other conversation, p50: baseline "
            f"{statistics.median(baseline) * 1000:.1f} ms, while a profile look-up was held "
            f"{statistics.median(during) * 1000:.1f} ms (max {max(during) * 1000:.1f} ms); "
            f"added delay {delay_ms:.1f} ms. The held conversation's message came after "
            f"{(slow_at - slow_started) * 1000:.0f} ms (look-up timeout {lookup_timeout:g} s, "
            f"homeserver held {HELD_S:g} s)"
        )
        # The other conversation went on while the look-up was still held: its first message
        # (sent while the lane was stuck) did not come after the held one.
        assert bob_socket.at["during 0"][0] < slow_at, "the fast conversation waited"
        assert delay_ms < 100, (baseline, during)
        # Not one message waited for the held look-up (it held the lane for lookup_timeout).
        assert max(during) - statistics.median(baseline) < lookup_timeout / 2, during
        # The held one gave up after the short timeout, named by the mxid's localpart.
        assert slow_at - slow_started < lookup_timeout + 3
        localpart = slow_user.user_id[1:].split(":")[0]
        assert slow_message["sender"]["name"] == localpart
        assert slow_message["conversationId"] == slow_room.conversation_id
        assert bob_socket.resyncs == []
    finally:
        await bob_socket.client.disconnect()
        await slow_user.close()
        await fast_user.close()


async def test_a_dropped_job_sends_resync_to_the_conversation(stack) -> None:
    """A job that fails, and ones that do not fit their lane: the conversation's sockets hear
    ``resync {conversationId, reason}``, never silence, and at most one a second."""
    app = stack.app
    bob = await crm_user(app, "Bob Resync")
    conv = await project_chat(app, [bob], name="Resync")
    socket = Arrivals()
    await socket.client.connect(
        stack.bridge_url, auth={"token": token(app, bob)}, transports=["websocket"]
    )
    realtime = app[REALTIME]
    try:

        async def fails() -> None:
            raise RuntimeError("a job that breaks")

        realtime.live.submit(conv.room_id, fails)
        await eventually(lambda: asyncio.sleep(0, socket.resyncs), timeout=10)
        assert socket.resyncs == [{"conversationId": conv.conversation_id, "reason": FAILED}]

        # A lane of its own, small, on the same fan-out: the third job does not fit.
        lanes = Lanes("test", per_lane=2, on_drop=realtime.fanout.resync)
        gate = asyncio.Event()
        ran: list[int] = []

        def job(i: int):
            async def run() -> None:
                await gate.wait()
                ran.append(i)

            return run

        accepted = [lanes.submit(conv.room_id, job(i)) for i in range(5)]
        assert accepted == [True, True, False, False, False]
        overflow = {"conversationId": conv.conversation_id, "reason": OVERFLOW}
        await eventually(lambda: asyncio.sleep(0, overflow in socket.resyncs), timeout=10)
        gate.set()
        await lanes.drain()
        assert ran == [0, 1]  # in order, the ones that fit
        assert lanes.dropped[OVERFLOW] == 3
        # One at once, one a second later for the drops in between: not one per job.
        await eventually(lambda: asyncio.sleep(0, socket.resyncs.count(overflow) == 2))
        await asyncio.sleep(1.5)
        assert socket.resyncs.count(overflow) == 2
        assert len(lanes) == 0  # the idle lane is gone
        await lanes.stop()
    finally:
        await socket.client.disconnect()


async def test_lanes_keep_order_per_key_and_run_keys_side_by_side() -> None:
    lanes = Lanes("order", workers=4)
    seen: list[tuple[str, int]] = []
    release = asyncio.Event()

    def job(key: str, i: int, wait: bool = False):
        async def run() -> None:
            if wait:
                await release.wait()
            seen.append((key, i))

        return run

    lanes.submit("a", job("a", 0, wait=True))
    for i in range(1, 4):
        lanes.submit("a", job("a", i))
        lanes.submit("b", job("b", i))
    await eventually(lambda: asyncio.sleep(0, len(seen) == 3), timeout=5, interval=0.01)
    assert seen == [("b", 1), ("b", 2), ("b", 3)]  # b does not wait for a
    release.set()
    await lanes.drain()
    assert [i for k, i in seen if k == "a"] == [0, 1, 2, 3]
    assert len(lanes) == 0
    await lanes.stop()
