"""No single point of failure in the receiving role (matrix/receiver.py, docs/operator-guide.md
"Scaling out").

Two processes configured to receive transactions sit behind deploy/nginx.conf's door run
by nginx (where installed) or ``ReceiverRouter`` (the same rule in aiohttp: a 503 sends the
request to the next process), on a PostgreSQL cluster of their own. One holds the receiver
lock; the other is standby.

* Two receivers never both acknowledge: every transaction Synapse created was answered 200
  by exactly one process (the proxy's record; Synapse holds none unacknowledged in
  ``application_services_txns``; each is in the bridge's ``as_txn``), the standby says so in
  its log and ``/health/ready``, a holder whose lock session PostgreSQL ends stops answering
  at once, and a receiver stopped with SIGTERM hands over within seconds.
* Failover: the receiver is killed with SIGKILL during a burst from a matrix-nio user; the
  standby takes over (the time is printed), and a socket on a third (facade) process ends
  with every message exactly once, live plus catch-up from its newest cursor.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import unique
from tests.fault_support import FaultStack
from tests.fault_traffic import Chat
from tests.helpers import eventually
from tests.receiver_support import (
    NginxReceivers,
    Pair,
    burst,
    failover_during_burst,
    lock_holder_pid,
    project_with_element_user,
    receiver_pair,
    role_of,
)

pytestmark = pytest.mark.integration


# deploy/nginx.conf's own door where nginx is installed (Debian: nginx-light), the aiohttp
# router doing the same elsewhere: one of the two, so the suite pays for one.
PROXY = "nginx" if NginxReceivers.available else "router"


@pytest.fixture(params=[PROXY])
async def pair(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Pair]:
    async with receiver_pair(tmp_path, request.param) as made:
        yield made


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

        # A planned stop (SIGTERM, a rolling deploy) of whichever receives: the lock goes as
        # soon as it stops accepting, and the other takes over well within its drain.
        roles = {p.url: await role_of(p.url) for p in pair.processes}
        stopping = next(p for p in pair.processes if roles[p.url] == "receiver")
        other = next(p for p in pair.processes if p is not stopping)
        await asyncio.to_thread(stopping.stop)
        stopped = time.monotonic()

        async def other_receives() -> bool:
            return await role_of(other.url) == "receiver"

        await eventually(other_receives, timeout=10, interval=0.05)
        print(f"\nSIGTERM: the other process received {time.monotonic() - stopped:.2f} s later")
        await burst(fs, carol, room_id, [f"third {i:03d}" for i in range(20)], workers=3)
        async with aiohttp.ClientSession() as session:
            bob = Chat(session, other.url, fs.token(bob_id))

            async def all_indexed() -> bool:
                history = await bob.history(cid)
                return len({m["content"] for m in history}) >= 100

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
