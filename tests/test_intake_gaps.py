"""Skipped transaction ids: the intake refuses the next transaction once so that the
homeserver resends the one it stranded, over real HTTP against the in-process intake."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import build_app
from bridge.config import Config
from bridge.context import CONFIG, DISPATCHER
from bridge.matrix.gaps import FRUITLESS_BEFORE_OFF, MAX_GAP, MAX_OPEN, GapTracker
from bridge.registration import generate
from tests.test_intake import message

GAP_SECONDS = 0.3


def _config(tmp_path: Path) -> Config:
    config_path = tmp_path / "config.yaml"
    if not config_path.exists():
        generate(config_path, tmp_path / "registration.yaml")
    config = Config.load(config_path, environ={})
    config.set("database.url", f"sqlite:{tmp_path / 'bridge.db'}")
    config.set("appservice.gap_recovery_seconds", GAP_SECONDS)
    return config


@pytest.fixture
async def client(tmp_path: Path, aiohttp_client) -> TestClient:
    return await aiohttp_client(build_app(_config(tmp_path), check_homeserver_on_start=False))


class Intake:
    """Sends transactions as Synapse would and records what the handlers saw."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.seen: list[str] = []

        async def record(event: dict) -> None:
            self.seen.append(event["event_id"])

        client.app[DISPATCHER].on_timeline(record)

    def gaps_last(self) -> int | None:
        from bridge.matrix.intake import _INTAKE

        return self.client.app[_INTAKE].gaps.last

    async def put(self, txn_id: str, *event_ids: str, ephemeral: list | None = None) -> int:
        token = self.client.app[CONFIG]["appservice.hs_token"]
        body: dict = {"events": [message(e) for e in event_ids]}
        if ephemeral:
            body["ephemeral"] = ephemeral
        resp = await self.client.put(
            f"/_matrix/app/v1/transactions/{txn_id}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )
        if resp.status != 200:
            body = await resp.json()
            assert body["errcode"] and body["message"]
        return resp.status


async def test_a_skipped_id_refuses_the_next_transaction_once(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    intake = Intake(client)
    assert await intake.put("1", "$1") == 200
    assert await intake.put("3", "$3") == 200
    # Before the gap timeout nothing is refused.
    assert await intake.put("4", "$4") == 200
    await asyncio.sleep(GAP_SECONDS * 2)
    with caplog.at_level(logging.WARNING, logger="bridge.matrix.gaps"):
        assert await intake.put("5", "$5") == 503
    assert "$5" not in intake.seen  # refused before handling, so not recorded either
    assert [r for r in caplog.records if "2" in r.getMessage() and "refusing" in r.getMessage()]
    # The recoverer: the stranded one first, then the refused one, then new ones.
    assert await intake.put("2", "$2") == 200
    assert await intake.put("5", "$5") == 200
    assert await intake.put("6", "$6") == 200
    assert intake.seen == ["$1", "$3", "$4", "$2", "$5", "$6"]


async def test_the_brief_sequence(client: TestClient) -> None:
    intake = Intake(client)
    assert await intake.put("1", "$1") == 200
    assert await intake.put("3", "$3") == 200
    await asyncio.sleep(GAP_SECONDS * 2)
    assert await intake.put("4", "$4") == 503
    assert await intake.put("2", "$2") == 200
    assert await intake.put("3", "$3") == 200  # a replay of a handled one: acknowledged
    assert await intake.put("4", "$4") == 200
    assert await intake.put("5", "$5") == 200
    assert intake.seen == ["$1", "$3", "$2", "$4", "$5"]


async def test_a_transaction_with_ephemeral_events_is_not_refused(client: TestClient) -> None:
    """Synapse does not store ephemeral events: a refused receipt would be lost."""
    intake = Intake(client)
    assert await intake.put("1", "$e1") == 200
    assert await intake.put("3", "$e3") == 200
    await asyncio.sleep(GAP_SECONDS * 2)
    receipt = {"type": "m.receipt", "room_id": "!room:localhost", "content": {}}
    assert await intake.put("4", "$e4", ephemeral=[receipt]) == 200
    assert await intake.put("5", "$e5") == 503
    assert await intake.put("2", "$e2") == 200
    assert await intake.put("5", "$e5") == 200
    assert intake.seen == ["$e1", "$e3", "$e4", "$e2", "$e5"]


async def test_a_gap_is_refused_for_once_then_given_up(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    intake = Intake(client)
    for txn in ("1", "2"):
        assert await intake.put(txn, f"$a{txn}") == 200
    assert await intake.put("4", "$a4") == 200
    await asyncio.sleep(GAP_SECONDS * 2)
    assert await intake.put("5", "$a5") == 503
    with caplog.at_level(logging.WARNING, logger="bridge.matrix.gaps"):
        # The homeserver had nothing stored: only the refused one comes back.
        assert await intake.put("5", "$a5") == 200
    assert any("giving up" in r.getMessage() for r in caplog.records)
    await asyncio.sleep(GAP_SECONDS * 2)
    # Never refused again for 3. Later skips still are, until FRUITLESS_BEFORE_OFF refusals
    # in a row brought nothing back (the counter is shared with other appservices): then
    # recovery is off and no skip is refused.
    assert await intake.put("6", "$a6") == 200
    n = 6
    for _ in range(FRUITLESS_BEFORE_OFF - 1):
        assert await intake.put(str(n + 2), f"$a{n + 2}") == 200  # skips n + 1
        await asyncio.sleep(GAP_SECONDS * 2)
        assert await intake.put(str(n + 3), f"$a{n + 3}") == 503
        assert await intake.put(str(n + 3), f"$a{n + 3}") == 200  # nothing else came
        n += 3
    # The first refusal (5) and these: recovery turned off at the last one, not before.
    offs = [r for r in caplog.records if "off until restart" in r.getMessage()]
    assert len(offs) == 1 and offs[0] is caplog.records[-1], [r.getMessage() for r in offs]
    assert await intake.put(str(n + 2), f"$a{n + 2}") == 200
    await asyncio.sleep(GAP_SECONDS * 2)
    assert await intake.put(str(n + 3), f"$a{n + 3}") == 200  # off: not refused
    assert intake.gaps_last() == n + 3
    # A given-up one arriving late is handled, and is not taken for a new epoch.
    assert await intake.put("3", "$a3") == 200
    assert intake.gaps_last() == n + 3
    assert intake.seen[:4] == ["$a1", "$a2", "$a4", "$a5"] and intake.seen[-1] == "$a3"


async def test_ids_starting_again_are_not_a_gap(client: TestClient) -> None:
    intake = Intake(client)
    for txn in ("1", "2", "3"):
        assert await intake.put(txn, f"$old{txn}") == 200
    # Synapse on SQLite restarted: ids count from 1 again, with new events.
    assert await intake.put("1", "$new1") == 200
    await asyncio.sleep(GAP_SECONDS * 2)
    assert await intake.put("2", "$new2") == 200
    assert await intake.put("3", "$new3") == 200
    assert intake.seen == ["$old1", "$old2", "$old3", "$new1", "$new2", "$new3"]


async def test_non_numeric_ids_have_no_gaps(client: TestClient) -> None:
    intake = Intake(client)
    for txn in ("a1", "a3", "txn-9", "1x"):
        assert await intake.put(txn, f"${txn}") == 200
    await asyncio.sleep(GAP_SECONDS * 2)
    assert await intake.put("zz", "$zz") == 200
    assert await intake.put("a5", "$a5") == 200
    assert len(intake.seen) == 6


@pytest.mark.parametrize(
    ("first_handled", "n"),
    [
        # The bridge was killed; txn 9 failed and Synapse stranded it: the new process
        # reads the last id handled from as_txn.
        pytest.param(("7", "8"), 10, id="trailing"),
        # A handover within the recovery time of a skip (test_two_receivers_never_both_
        # acknowledge on the floors: txn 53 stayed in Synapse): the hole is in the log.
        pytest.param(("7", "8", "10"), 11, id="left-open"),
    ],
)
async def test_a_gap_across_a_bridge_restart_is_recovered(
    tmp_path: Path, aiohttp_client, first_handled: tuple[str, ...], n: int
) -> None:
    """``n``: the first id the next process receives; 9 never came to either."""

    async def process() -> Intake:
        app = build_app(_config(tmp_path), check_homeserver_on_start=False)
        return Intake(await aiohttp_client(app))

    first = await process()
    for txn in first_handled:
        assert await first.put(txn, f"$r{txn}") == 200
    await first.client.close()  # stopped before the gap was due
    second = await process()
    assert await second.put(str(n), f"$r{n}") == 200
    await asyncio.sleep(GAP_SECONDS * 2)
    assert await second.put(str(n + 1), f"$r{n + 1}") == 503
    assert await second.put("9", "$r9") == 200
    assert await second.put(str(n + 1), f"$r{n + 1}") == 200
    assert second.seen == [f"$r{n}", "$r9", f"$r{n + 1}"]


def test_open_gaps_are_capped() -> None:
    """Jumps that keep coming faster than refusals fill them: the oldest are given up on,
    so the map of open gaps stays bounded (MAX_OPEN)."""
    now = [0.0]
    tracker = GapTracker(timeout=3600, clock=lambda: now[0])
    n = 1
    tracker.handled(str(n))
    for _ in range(50):
        n += MAX_GAP  # skips MAX_GAP - 1 ids each time
        tracker.handled(str(n))
        assert len(tracker.open) <= MAX_OPEN
    assert len(tracker.open) == MAX_OPEN
    assert min(tracker.open) > n - MAX_OPEN - 50  # the newest gaps are the ones kept
    tracker.handled(str(max(tracker.open)))  # a kept one arriving still counts as filled
    assert len(tracker.open) == MAX_OPEN - 1


def test_a_gap_is_due_after_the_timeout_until_a_refusal_is_under_way() -> None:
    """``due`` is what the receiver's probe waits for (matrix/probe.py): gaps open for the
    timeout, none while a refusal is on its way back."""
    now = [0.0]
    tracker = GapTracker(timeout=5, clock=lambda: now[0])
    tracker.handled("1")
    tracker.handled("3")
    assert tracker.due() == set()
    now[0] = 5.0
    assert tracker.due() == {2}
    assert tracker.should_refuse("4")
    assert tracker.due() == set()  # the refusal's recovery is under way
    tracker.handled("2")
    tracker.handled("4")
    assert tracker.due() == set() and not tracker.open


def test_resume_reopens_the_holes_of_the_newest_epoch_only() -> None:
    now = [100.0]
    tracker = GapTracker(timeout=5, clock=lambda: now[0])
    # Newest first: 20, 18, 17, 15 in this epoch; then 40, 39 from before a counter reset;
    # "x1" is another homeserver's id.
    tracker.resume(["20", "x1", "18", "17", "15", "40", "39"])
    assert tracker.last == 20
    assert set(tracker.open) == {19, 16}
    assert tracker.due() == set()
    now[0] = 105.0
    assert tracker.due() == {19, 16}
    tracker.handled("19")
    assert set(tracker.open) == {16}
    # A jump too wide to be a stranded transaction is no gap, and nothing recorded is none.
    wide = GapTracker(timeout=5)
    wide.resume([str(10 + MAX_GAP + 2), "10"])
    assert wide.open == {} and wide.last == 10 + MAX_GAP + 2
    empty = GapTracker(timeout=5)
    empty.resume([])
    assert empty.last is None and empty.open == {}
    off = GapTracker(timeout=0)
    off.resume(["5", "3"])
    assert off.last == 5 and off.open == {}
