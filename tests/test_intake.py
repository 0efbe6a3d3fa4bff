"""The transaction endpoint in isolation: token checks, replays and failed handling."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import build_app
from bridge.config import Config
from bridge.context import DISPATCHER, HOMESERVER, RECEIPTS, TXN_LOG
from bridge.matrix.early_receipts import EarlyReceipts
from bridge.registration import generate


@pytest.fixture
async def client(tmp_path: Path, aiohttp_client) -> TestClient:
    config_path = tmp_path / "config.yaml"
    generate(config_path, tmp_path / "registration.yaml")
    config = Config.load(config_path, environ={})
    config.set("database.url", f"sqlite:{tmp_path / 'bridge.db'}")
    app = build_app(config, check_homeserver_on_start=False)
    return await aiohttp_client(app)


def auth(client: TestClient, token: str | None = None) -> dict[str, str]:
    from bridge.context import CONFIG

    token = token or client.app[CONFIG]["appservice.hs_token"]
    return {"Authorization": f"Bearer {token}"}


def message(event_id: str) -> dict:
    return {
        "type": "m.room.message",
        "event_id": event_id,
        "room_id": "!room:localhost",
        "sender": "@alice:localhost",
        "origin_server_ts": 1700000000000,
        "content": {"msgtype": "m.text", "body": "hi"},
    }


async def test_a_transaction_is_a_sign_of_life(client: TestClient) -> None:
    """Counted down by the monitor, the homeserver is up again for requests as soon as it
    pushes a transaction, not only after the monitor's next probe."""
    hs = client.app[HOMESERVER]
    hs.available, hs.last_answer = False, hs.last_answer - 60
    assert hs.down()
    wrong = await client.put(
        "/_matrix/app/v1/transactions/0", json={"events": []}, headers=auth(client, "nope")
    )
    assert wrong.status == 403 and hs.down()  # anyone else's call proves nothing
    resp = await client.put(
        "/_matrix/app/v1/transactions/1", json={"events": []}, headers=auth(client)
    )
    assert resp.status == 200
    assert not hs.down()


async def test_missing_token_is_401(client: TestClient) -> None:
    resp = await client.put("/_matrix/app/v1/transactions/1", json={"events": []})
    assert resp.status == 401
    body = await resp.json()
    assert body["errcode"] == "M_UNAUTHORIZED" and body["message"] and body["error"]


async def test_wrong_token_is_403(client: TestClient) -> None:
    resp = await client.put(
        "/_matrix/app/v1/transactions/1", json={"events": []}, headers=auth(client, "nope")
    )
    assert resp.status == 403
    assert (await resp.json())["errcode"] == "M_FORBIDDEN"
    for path in ("/_matrix/app/v1/users/@a:localhost", "/_matrix/app/v1/rooms/%23a:localhost"):
        assert (await client.get(path, headers=auth(client, "nope"))).status == 403
    assert (await client.post("/_matrix/app/v1/ping", json={})).status == 401


async def test_replayed_transaction_is_not_processed_twice(client: TestClient) -> None:
    seen: list[str] = []

    async def record(event: dict) -> None:
        seen.append(event["event_id"])

    client.app[DISPATCHER].on_timeline(record)
    body = {"events": [message("$1"), message("$2")]}
    for _ in range(3):
        resp = await client.put("/_matrix/app/v1/transactions/abc", json=body, headers=auth(client))
        assert resp.status == 200
        assert await resp.json() == {}
    assert seen == ["$1", "$2"]
    assert await client.app[TXN_LOG].get("abc")


async def test_reused_id_with_other_events_is_a_new_transaction(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A homeserver that reset its counter (Synapse on SQLite after a restart) sends ids it
    used before; only the same id with the same body is a replay."""
    from bridge.context import EVENT_INDEX

    seen: list[str] = []

    async def record(event: dict) -> None:
        seen.append(event["event_id"])

    client.app[DISPATCHER].on_timeline(record)
    index = client.app[EVENT_INDEX]

    async def put(txn_id: str, *event_ids: str, age: int = 10, typing: bool = False) -> None:
        body: dict = {
            "events": [{**message(e), "age": age, "unsigned": {"age": age}} for e in event_ids]
        }
        if typing:
            body["ephemeral"] = [{"type": "m.typing", "room_id": "!r", "content": {}}]
        resp = await client.put(
            f"/_matrix/app/v1/transactions/{txn_id}", json=body, headers=auth(client)
        )
        assert resp.status == 200, await resp.text()

    await put("1", "$a", typing=True)
    await put("2", "$b")
    await put("1", "$a", typing=True)  # the same body again
    # Synapse's retry: the events from its database with a new age, the ephemeral ones gone.
    await put("1", "$a", age=2000)

    def warnings() -> int:
        return sum("reset its transaction counter" in r.getMessage() for r in caplog.records)

    assert seen == ["$a", "$b"]
    assert await index.count("!room:localhost") == 2
    assert warnings() == 0
    await put("1", "$c")  # after the homeserver reset its counter
    await put("2", "$d")
    await put("2", "$d")  # and a replay of the new one
    assert seen == ["$a", "$b", "$c", "$d"]
    assert await index.count("!room:localhost") == 4
    assert warnings() == 1


async def test_failed_handling_is_retried_not_lost(client: TestClient) -> None:
    attempts: list[str] = []

    async def flaky(event: dict) -> None:
        attempts.append(event["event_id"])
        if len(attempts) == 1:
            raise RuntimeError("database hiccup")

    client.app[DISPATCHER].on_timeline(flaky)
    body = {"events": [message("$x")]}
    resp = await client.put("/_matrix/app/v1/transactions/t9", json=body, headers=auth(client))
    assert resp.status == 500
    assert (await resp.json())["errcode"] == "M_UNKNOWN"
    assert await client.app[TXN_LOG].get("t9") is None
    resp = await client.put("/_matrix/app/v1/transactions/t9", json=body, headers=auth(client))
    assert resp.status == 200
    assert attempts == ["$x", "$x"]
    assert await client.app[TXN_LOG].get("t9")


async def test_ephemeral_events_reach_handlers(client: TestClient) -> None:
    got: list[str] = []

    async def on_ephemeral(event: dict) -> None:
        got.append(event["type"])

    client.app[DISPATCHER].on_ephemeral(on_ephemeral)
    body = {
        "events": [],
        "ephemeral": [{"type": "m.typing", "room_id": "!r", "content": {"user_ids": []}}],
        "de.sorunome.msc2409.ephemeral": [{"type": "m.presence", "content": {}}],
    }
    resp = await client.put("/_matrix/app/v1/transactions/e1", json=body, headers=auth(client))
    assert resp.status == 200
    assert got == ["m.typing", "m.presence"]


def receipt_at(event_id: str, reader: str = "@bob:localhost") -> dict:
    content = {event_id: {"m.read": {reader: {"ts": 1700000001000}}}}
    return {"type": "m.receipt", "room_id": "!room:localhost", "content": content}


async def test_a_receipt_before_its_event_waits_for_it(client: TestClient) -> None:
    """Synapse with workers can deliver a receipt one transaction before the message it
    reads (two replication streams, docs/architecture.md "Synapse with workers"): it is
    applied when the message arrives, not dropped."""
    body = {"events": [], "ephemeral": [receipt_at("$later")]}
    resp = await client.put("/_matrix/app/v1/transactions/w1", json=body, headers=auth(client))
    assert resp.status == 200
    receipts = client.app[RECEIPTS]
    assert await receipts.get("!room:localhost", "@bob:localhost") is None
    body = {"events": [message("$later")]}
    resp = await client.put("/_matrix/app/v1/transactions/w2", json=body, headers=auth(client))
    assert resp.status == 200
    read = await receipts.get("!room:localhost", "@bob:localhost")
    assert read is not None and read.event_id == "$later"
    # A receipt at a message already indexed goes straight through, as before.
    body = {"events": [message("$now")], "ephemeral": [receipt_at("$now")]}
    resp = await client.put("/_matrix/app/v1/transactions/w3", json=body, headers=auth(client))
    read = await receipts.get("!room:localhost", "@bob:localhost")
    assert read is not None and read.event_id == "$now"


async def test_early_receipts_are_bounded() -> None:
    async def unknown(room_id: str, event_id: str) -> bool:
        return event_id == "$known"

    early = EarlyReceipts(unknown, max_held=2, max_age=60)
    both = receipt_at("$known")
    both["content"].update(receipt_at("$a")["content"])
    passed = await early.split(both)
    assert passed is not None and set(passed["content"]) == {"$known"}
    for event_id in ("$b", "$c"):
        assert await early.split(receipt_at(event_id)) is None
    assert len(early) == 2 and early.expired == 1  # $a, the oldest, went
    assert early.release(["$a"]) == []
    assert [set(r["content"]) for r in early.release(["$c", "$b"])] == [{"$c"}, {"$b"}]
    assert await early.split({"type": "m.typing", "room_id": "!r", "content": {}}) is not None


async def test_malformed_transaction_is_400(client: TestClient) -> None:
    resp = await client.put(
        "/_matrix/app/v1/transactions/bad",
        data=b"{not json",
        headers={**auth(client), "Content-Type": "application/json"},
    )
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_NOT_JSON"


async def test_health_endpoints(client: TestClient) -> None:
    assert (await client.get("/health/live")).status == 200
    resp = await client.get("/health/ready")
    assert resp.status == 200, await resp.text()
    assert (await client.get("/no/such/route")).status == 404


async def test_malformed_event_does_not_wedge_intake(client: TestClient) -> None:
    """A client-chosen non-string msgtype must not fail the transaction forever."""
    from bridge.context import EVENT_INDEX

    sticker = {**message("$sticker"), "type": "m.sticker", "content": {"msgtype": 1, "body": "x"}}
    weird = {**message("$weird"), "content": {"msgtype": ["a"], "body": "y"}}
    not_a_dict = {**message("$nd"), "content": "text"}
    body = {"events": [sticker, weird, not_a_dict, message("$fine")]}
    resp = await client.put("/_matrix/app/v1/transactions/w1", json=body, headers=auth(client))
    assert resp.status == 200
    index = client.app[EVENT_INDEX]
    assert (await index.get("$sticker")).msgtype is None
    assert (await index.get("$weird")).msgtype is None
    assert await index.get("$nd") is None
    assert (await index.get("$fine")).msgtype == "m.text"


async def test_a_transaction_outlasting_the_shutdown_wait_is_not_acknowledged(
    client: TestClient,
) -> None:
    """Shutdown waits (bounded) for the transaction being handled, then stops the real-time
    lanes; one that finishes after that wait gave up may have lost its edits, deletes and
    receipts in the stopped lanes, so it answers 503 unrecorded and the homeserver sends it
    to the next receiver."""
    from bridge.matrix.intake import close

    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow(event: dict) -> None:
        entered.set()
        await release.wait()

    client.app[DISPATCHER].on_timeline(slow)
    body = {"events": [message("$slow")]}
    put = asyncio.create_task(
        client.put("/_matrix/app/v1/transactions/s1", json=body, headers=auth(client))
    )
    await asyncio.wait_for(entered.wait(), 10)
    await close(client.app, timeout=0.1)  # gives up waiting: the lanes would stop now
    release.set()
    resp = await put
    assert resp.status == 503, await resp.text()
    assert (await resp.json())["errcode"]
    assert await client.app[TXN_LOG].get("s1") is None
