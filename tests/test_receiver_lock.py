"""The receiver lock (bridge/matrix/receiver.py) on a real PostgreSQL, without the rest of
the bridge: two ``Receiver`` objects on two connection pools stand for two processes.

The whole-process behaviour (Synapse, a proxy, SIGKILL) is in test_receiver_failover.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from bridge.db import create_database
from bridge.matrix.receiver import NotReceiving, Receiver, Role, receiver_key
from tests.conftest import POSTGRES_DSN, create_schema, drop_schema, postgres_args, unique
from tests.helpers import eventually


async def until(predicate, timeout: float) -> None:
    async def check() -> bool:
        return predicate()

    await eventually(check, timeout=timeout, interval=0.01)


@pytest.fixture
async def pools() -> AsyncIterator[list]:
    schema = await create_schema()
    databases = [create_database(POSTGRES_DSN, postgres_args(schema)) for _ in range(2)]
    try:
        for db in databases:
            await db.start()
        yield databases
    finally:
        for db in databases:
            await db.stop()
        await drop_schema(schema)


def receiver(db, key: int, duties: list[str]) -> Receiver:
    made = Receiver(db, key, poll=0.2)

    async def duty() -> None:
        duties.append("started")
        await asyncio.Event().wait()

    made.duty("test", duty)
    return made


async def holder_pid(key: int) -> int | None:
    conn = await asyncpg.connect(POSTGRES_DSN)
    try:
        unsigned = key & 0xFFFFFFFFFFFFFFFF
        return await conn.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype='advisory' AND granted AND objsubid=1 "
            "AND classid::bigint=$1 AND objid::bigint=$2",
            unsigned >> 32,
            unsigned & 0xFFFFFFFF,
        )
    finally:
        await conn.close()


async def test_one_receives_the_other_stands_by_and_takes_over(pools) -> None:
    key = receiver_key(unique("deployment"))
    first_duties: list[str] = []
    second_duties: list[str] = []
    first, second = receiver(pools[0], key, first_duties), receiver(pools[1], key, second_duties)
    await first.start()
    await second.start()
    try:
        assert (first.role, second.role) == (Role.RECEIVER, Role.STANDBY)
        await asyncio.sleep(0.5)  # several polls: the standby stays standby
        assert second.role is Role.STANDBY and second_duties == []
        assert first_duties == ["started"]
        with pytest.raises(NotReceiving):
            second.check()
        async with first.fenced() as conn:
            assert await conn.fetchval("SELECT 1") == 1

        await first.close()  # as a shutdown does: the lock goes with the session
        await until(lambda: second.role is Role.RECEIVER, 3)
        await until(lambda: second_duties == ["started"], 3)
    finally:
        await first.close()
        await second.close()


async def test_a_holder_whose_session_ends_stops_receiving_at_once(pools) -> None:
    key = receiver_key(unique("deployment"))
    first, second = receiver(pools[0], key, []), receiver(pools[1], key, [])
    await first.start()
    await second.start()
    try:
        pid = await holder_pid(key)
        assert pid is not None
        admin = await asyncpg.connect(POSTGRES_DSN)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        # Standby before any heartbeat could have run (the connection's own close).
        await until(lambda: first.role is not Role.RECEIVER, 1)
        with pytest.raises(NotReceiving):
            async with first.fenced():
                pass

        # Exactly one of the two holds the lock afterwards.
        async def one_receiver() -> bool:
            roles = sorted([first.role, second.role])
            return roles == [Role.RECEIVER, Role.STANDBY]

        await eventually(one_receiver, timeout=3, interval=0.05)
        assert await holder_pid(key) not in (None, pid)
    finally:
        await first.close()
        await second.close()


async def test_with_sqlite_the_one_process_receives(tmp_path: Path) -> None:
    db = create_database(f"sqlite:{tmp_path / 'bridge.db'}")
    await db.start()
    duties: list[str] = []
    made = receiver(db, receiver_key("x"), duties)
    try:
        await made.start()
        assert made.role is Role.RECEIVER
        async with made.fenced() as conn:
            assert conn is None  # records go through the database as usual
        await until(lambda: duties == ["started"], 2)
    finally:
        await made.close()
        await db.stop()


async def test_a_facade_never_receives(pools) -> None:
    made = Receiver(pools[0], receiver_key(unique("deployment")), configured=False)
    await made.start()
    assert made.role is Role.FACADE
    with pytest.raises(NotReceiving):
        made.check()
    await made.close()
