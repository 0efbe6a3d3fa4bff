"""No single point of failure in the receiving role (matrix/receiver.py, docs/operator-guide.md
"Scaling out").

Two processes configured to receive transactions sit behind ``ReceiverRouter`` (what
deploy/nginx.conf does: a 503 sends the request to the next process), on a PostgreSQL
cluster of their own. One holds the receiver lock; the other is standby.

* Two receivers never both acknowledge: every transaction Synapse completed was answered
  200 by exactly one process (the router's record, Synapse's own ``last_txn``, the bridge's
  ``as_txn``), the standby says so in its log and ``/health/ready``, and a holder whose lock
  session PostgreSQL ends stops answering at once.
* Failover: the receiver is killed with SIGKILL during a burst from a matrix-nio user; the
  standby takes over (the time is printed), and a socket on a third (facade) process ends
  with every message exactly once, live plus catch-up from its newest cursor.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import unique
from tests.fault_support import FaultStack, fault_stack
from tests.fault_traffic import Chat, duplicated, join_when_invited, matrix_send, merged
from tests.helpers import eventually, matrix_user
from tests.realtime_support import BridgeProcess, Recorder, conversation_of
from tests.receiver_support import ReceiverRouter, lock_holder_pid, receiver_config, role_of

pytestmark = pytest.mark.integration


@dataclass
class Pair:
    fs: FaultStack
    router: ReceiverRouter
    standby: BridgeProcess

    @property
    def processes(self) -> list[BridgeProcess]:
        return [self.fs.bridge, self.standby]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    router = await ReceiverRouter().start()
    overrides = {
        "appservice.address": router.url,
        "api.rate_limit.send_requests": 10000,
        "api.rate_limit.requests": 10000,
    }
    try:
        async with fault_stack(tmp_path, bridge_db="private", **overrides) as fs:
            standby = BridgeProcess(receiver_config(fs.config), tmp_path, "standby")
            await standby.start()
            try:
                router.upstreams = [fs.bridge.url, standby.url]
                yield Pair(fs, router, standby)
            finally:
                standby.stop()
    finally:
        await router.stop()


def synapse_pending(fs: FaultStack) -> list[int]:
    """Transactions Synapse created and has not seen acknowledged: it writes each one to
    ``application_services_txns`` and deletes it on a 200 (``complete_appservice_txn``)."""
    conn = sqlite3.connect(fs.synapse.data_dir / "homeserver.db")
    try:
        return [row[0] for row in conn.execute("SELECT txn_id FROM application_services_txns")]
    finally:
        conn.close()


async def as_txn_ids(fs: FaultStack) -> set[str]:
    assert fs.postgres is not None
    schema_args = fs.config.get("database.args") or {}
    conn = await asyncpg.connect(fs.postgres.dsn, **{k: v for k, v in schema_args.items()
                                                      if k == "server_settings"})  # fmt: skip
    try:
        return {row["txn_id"] for row in await conn.fetch("SELECT txn_id FROM as_txn")}
    finally:
        await conn.close()


async def burst(fs: FaultStack, sender: Any, room_id: str, bodies: list[str], workers: int) -> None:
    queue = list(bodies)

    async def worker(n: int) -> None:
        while queue:
            body = queue.pop(0)
            await matrix_send(sender, room_id, body, txn_id=f"{n}-{body}")

    await asyncio.gather(*(worker(n) for n in range(workers)))


async def project_with_element_user(fs: FaultStack, name: str) -> tuple[Any, str, str, str]:
    """A project room with a CRM reader (bob) and a plain Matrix user (carol) who joined."""
    carol = await matrix_user(fs.synapse, unique("carol"))
    bob_id = await fs.directory.user(f"Bob {name}")
    carol_id = await fs.directory.user(f"Carol {name}", matrix_id=carol.user_id)
    project = await fs.directory.project(unique("p"), name, [bob_id, carol_id], bob_id)
    await join_when_invited(carol, project["roomId"])
    return carol, bob_id, conversation_of(project), project["roomId"]


def check_each_acknowledged_once(pair: Pair, logged: set[str]) -> None:
    """Synapse numbers transactions 1, 2, 3... (one counter, no restart here) and holds none
    unacknowledged: each of 1..N was answered 200 by exactly one process and is in the
    bridge's transaction log."""
    acks = pair.router.acknowledged()
    twice = {txn: by for txn, by in acks.items() if len(by) > 1}
    assert not twice, f"acknowledged more than once: {twice}"
    assert not synapse_pending(pair.fs)
    numbered = {int(txn) for txn in acks}
    assert numbered == set(range(1, max(numbered) + 1)), sorted(numbered)
    assert set(acks) <= logged, set(acks) - logged


async def test_two_receivers_never_both_acknowledge(pair: Pair) -> None:
    fs, router, standby = pair.fs, pair.router, pair.standby
    assert await role_of(fs.bridge.url) == "receiver"
    assert await role_of(standby.url) == "standby"
    assert "standby" in standby.log_path.read_text()

    # Straight to the standby, with the right token: refused, nothing recorded.
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            f"{standby.url}/_matrix/app/v1/transactions/{unique('direct')}",
            json={"events": []},
            headers={"Authorization": f"Bearer {fs.config['appservice.hs_token']}"},
        ) as resp,
    ):
        assert resp.status == 503
        refused = await resp.json()
    assert refused["errcode"] == "M_STANDBY" and refused["error"], refused

    carol, bob_id, cid, room_id = await project_with_element_user(fs, "Two receivers")
    try:
        await burst(fs, carol, room_id, [f"first {i:03d}" for i in range(40)], workers=3)

        # The holder's lock session ends under it (as when its connection breaks): it
        # stops receiving, and exactly one of the two holds the lock afterwards.
        assert fs.postgres is not None
        admin = await asyncpg.connect(fs.postgres.dsn)
        try:
            holder = await lock_holder_pid(admin, fs.config)
            assert holder is not None
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", holder)

            async def one_new_holder() -> bool:
                roles = sorted([await role_of(p.url) for p in pair.processes])
                new = await lock_holder_pid(admin, fs.config)
                return roles == ["receiver", "standby"] and new not in (None, holder)

            await eventually(one_new_holder, timeout=10, interval=0.1)
        finally:
            await admin.close()
        await burst(fs, carol, room_id, [f"second {i:03d}" for i in range(40)], workers=3)
        async with aiohttp.ClientSession() as session:
            bob = Chat(session, fs.url, fs.token(bob_id))

            async def all_indexed() -> bool:
                history = await bob.history(cid)
                return len({m["content"] for m in history}) >= 80

            await eventually(all_indexed, timeout=60, interval=0.5)
    finally:
        await carol.close()

    async def settled() -> bool:
        return not synapse_pending(fs)

    await eventually(settled, timeout=30, interval=0.2)
    check_each_acknowledged_once(pair, await as_txn_ids(fs))
    # Both took part: the standby's 503s sent requests on to the holder, never the other way.
    answered = {(a.upstream, a.status) for a in router.answers if a.txn_id is not None}
    assert (standby.url, 503) in answered or (fs.bridge.url, 503) in answered, answered
    by_process = {p.url: 0 for p in pair.processes}
    for upstreams in router.acknowledged().values():
        by_process[upstreams[0]] += 1
    print(f"\ntransactions acknowledged by process: {by_process}")


async def failover_during_burst(pair: Pair, messages: int, workers: int = 3) -> dict[str, Any]:
    """Kill the receiver with SIGKILL a quarter into a burst from a matrix-nio user; a socket
    on a facade process counts what it gets. Returns the figures."""
    fs, router = pair.fs, pair.router
    facade = await fs.facade("facade").start()
    carol, bob_id, cid, room_id = await project_with_element_user(fs, "Failover")
    bodies = [f"burst {i:04d}" for i in range(messages)]
    socket = await Recorder("bob on facade").connect(facade.url, fs.token(bob_id))
    figures: dict[str, Any] = {"messages": messages}
    try:
        sending = asyncio.create_task(burst(fs, carol, room_id, bodies, workers))

        async def a_quarter_live() -> bool:
            assert not sending.done() or sending.exception() is None
            return len(socket.of("new_message")) >= messages // 4

        await eventually(a_quarter_live, timeout=300, interval=0.02)
        victim, survivor = pair.fs.bridge, pair.standby
        assert await role_of(victim.url) == "receiver"
        victim.kill()
        killed = time.monotonic()

        async def survivor_receives() -> bool:
            return await role_of(survivor.url) == "receiver"

        await eventually(survivor_receives, timeout=15, interval=0.05)
        figures["lock_taken_s"] = round(time.monotonic() - killed, 2)

        def first_on_survivor() -> float | None:
            for answer in router.answers:
                ours = answer.upstream == survivor.url and answer.txn_id is not None
                if ours and answer.status == 200 and answer.at > killed:
                    return answer.at
            return None

        async def landed() -> bool:
            return first_on_survivor() is not None

        await eventually(landed, timeout=60, interval=0.05)
        figures["first_txn_on_standby_s"] = round((first_on_survivor() or 0) - killed, 2)
        await asyncio.wait_for(sending, timeout=600)

        async def all_live() -> bool:
            return {m["content"] for m in socket.of("new_message")} >= set(bodies)

        try:
            await eventually(all_live, timeout=max(30.0, messages / 20), interval=0.2)
        except AssertionError:
            pass  # what did not come live must come by catch-up, counted below
        live = socket.of("new_message")
        async with aiohttp.ClientSession() as session:
            bob = Chat(session, facade.url, fs.token(bob_id))
            fetched = await bob.catch_up(cid, live[-1]["cursor"] if live else None)
        view = [m["content"] for m in merged(live, fetched).values()]
        figures["live"] = len(live)
        figures["caught_up"] = len(fetched)
        figures["missing"] = sorted(set(bodies) - set(view))
        figures["duplicated"] = duplicated(view)
        figures["live_duplicated"] = duplicated(m["_id"] for m in live)
    finally:
        await socket.close()
        await carol.close()
        facade.stop()
    print(f"\nfailover: {figures}")
    return figures


def check_failover(figures: dict[str, Any]) -> None:
    assert not figures["missing"], figures
    assert not figures["duplicated"], figures
    assert not figures["live_duplicated"], figures
    assert figures["first_txn_on_standby_s"] <= 10, figures


async def test_failover_during_a_burst_loses_nothing(pair: Pair) -> None:
    check_failover(await failover_during_burst(pair, 200))


@pytest.mark.soak
@pytest.mark.timeout(1500)
async def test_failover_during_a_1000_message_burst_loses_nothing(pair: Pair) -> None:
    check_failover(await failover_during_burst(pair, 1000))
