"""One order for reading: unread counts, readBy, messages_read and mark-read follow Matrix's
timeline (Synapse's stream order), whatever order the bridge learned of events in.

A CRM user (REST) and an Element user (matrix-nio) send at once into one room, so the send
path indexes REST messages in the order their sends complete while the transactions bring
everything in stream order. The reader then marks read at three places of Matrix's timeline
(early, middle, 70 from the end). At each, the bridge must count what Matrix counts:

* Matrix's timeline is what a Matrix client syncing live sees: its incremental ``/sync``
  from before the burst on (Synapse's stream order);
* Synapse's own judgement is asked too, for a witness: a plain Matrix account (a puppet
  gets no push actions: Synapse skips exclusive appservice users) that sends its receipt
  at the same event from Element; Synapse marks each of its notifications read or unread
  by that receipt. The witness is a CRM user too, so the bridge's count for a receipt that
  came from Matrix is checked as well.

On the bridge's PostgreSQL and SQLite. The 1,000 + 1,000 version runs in ``make soak``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nio import AsyncClient

from bridge.db.unread import UNREAD_CAP
from bridge.ids import message_id_for_event
from bridge.realtime.ephemeral import MAX_READ_IDS
from tests.conftest import unique
from tests.fault_support import FaultStack, fault_stack
from tests.fault_traffic import RETRYABLE, Chat, join_when_invited, matrix_send
from tests.helpers import eventually, matrix_user
from tests.realtime_support import Recorder, conversation_of

pytestmark = pytest.mark.integration

log = logging.getLogger("tests.read_order")


async def _client_api(
    client: AsyncClient, method: str, path: str, body: Any = None, **params: Any
) -> dict[str, Any]:
    """Synapse's client-server API as a plain Matrix account (raw, as Element would call it)."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            f"{client.homeserver}/_matrix/client/v3/{path}",
            params=params,
            json=body,
            headers={"Authorization": f"Bearer {client.access_token}"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _sync(
    client: AsyncClient, since: str | None, limit: int, timeout: int = 0
) -> dict[str, Any]:
    room_filter = {"room": {"timeline": {"limit": limit}, "state": {"lazy_load_members": True}}}
    params = {"timeout": str(timeout), "filter": json.dumps(room_filter)}
    if since:
        params["since"] = since
    return await _client_api(client, "GET", "sync", **params)


class LiveTimeline:
    """A Matrix client syncing live, as Element does: the room's messages in the order its
    incremental ``/sync`` hands them out (Synapse's stream order)."""

    def __init__(self, client: AsyncClient, room_id: str, since: str) -> None:
        self.client, self.room_id, self.since = client, room_id, since
        self.messages: list[dict[str, Any]] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            synced = await _sync(self.client, self.since, limit=200, timeout=1000)
            self.since = synced["next_batch"]
            room = synced.get("rooms", {}).get("join", {}).get(self.room_id)
            if room is None:
                continue
            assert not room["timeline"].get("limited"), "the live sync missed events"
            self.messages += [
                e for e in room["timeline"]["events"] if e["type"] == "m.room.message"
            ]

    async def until(self, count: int) -> list[dict[str, Any]]:
        async def complete() -> bool:
            if self._task.done():
                self._task.result()  # raises what stopped it
            return len(self.messages) >= count

        await eventually(complete, timeout=120, interval=0.2)
        return self.messages

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def _send_and_read(client: AsyncClient, room_id: str, body: str) -> str:
    """A message from this Matrix account, and its receipt at it; the event id."""
    content = {"msgtype": "m.text", "body": body}
    path = f"rooms/{room_id}/send/m.room.message/{unique('txn')}"
    event_id = (await _client_api(client, "PUT", path, content))["event_id"]
    await _client_api(client, "POST", f"rooms/{room_id}/receipt/m.read/{event_id}", {})
    return event_id


async def _notification_count(client: AsyncClient, room_id: str) -> int:
    """Synapse's own count for this account: its notifications in the room that Synapse
    says are unread (``GET /notifications`` judges ``read`` against the account's receipt
    by depth, then stream order). ``unread_notifications`` in ``/sync`` would be the
    stream-order count itself, but Synapse 1.163 serves it from a cache that lags: in a
    plain two-user room it stayed at 3 after three more messages, a second receipt and a
    notification rotation, while its ``event_push_summary`` held 5."""
    unread, token = 0, None
    for _ in range(100):
        page = await _client_api(
            client, "GET", "notifications", limit="500", **({"from": token} if token else {})
        )
        unread += sum(1 for n in page["notifications"] if n["room_id"] == room_id and not n["read"])
        token = page.get("next_token")
        if not token or not page["notifications"]:
            return unread
    raise AssertionError("notifications did not end after 100 pages")


async def _unread(chat: Chat, cid: str) -> tuple[int, int]:
    """``unreadCount`` of the conversation, and ``/unread-count``."""
    listed = await chat.conversation(cid)
    async with chat.session.get(chat.url + "/api/chat/unread-count", headers=chat.headers) as resp:
        assert resp.status == 200, await resp.text()
        total = (await resp.json())["count"]
    return listed["unreadCount"], total


async def _burst(fs: FaultStack, rest: int, matrix: int, workers: int = 6) -> None:
    directory, url = fs.directory, fs.url
    carol_mx = await matrix_user(fs.synapse, unique("carol"))
    witness_mx = await matrix_user(fs.synapse, unique("wit"))
    alice_id = await directory.user("Alice Sender")
    bob_id = await directory.user("Bob Reader")
    carol_id = await directory.user("Carol Element", matrix_id=carol_mx.user_id)
    witness_id = await directory.user("Wendy Witness", matrix_id=witness_mx.user_id)
    members = [alice_id, bob_id, carol_id, witness_id]
    project = await directory.project(unique("p"), "Read order", members, alice_id)
    cid, room_id = conversation_of(project), project["roomId"]
    await asyncio.gather(
        join_when_invited(carol_mx, room_id), join_when_invited(witness_mx, room_id)
    )
    watcher = await Recorder("alice").connect(url, fs.token(alice_id))
    async with aiohttp.ClientSession() as session:
        alice = Chat(session, url, fs.token(alice_id))
        bob = Chat(session, url, fs.token(bob_id))
        witness = Chat(session, url, fs.token(witness_id))
        # Before the burst, read by both readers: Synapse counts notifications only for
        # accounts that sent a receipt in the room.
        opening = message_id_for_event(
            await _send_and_read(witness_mx, room_id, "opening from the witness")
        )

        async def opening_indexed() -> bool:
            page = await bob.page(cid, page=1, limit=1)
            return [m["_id"] for m in page["messages"]] == [opening]

        await eventually(opening_indexed, timeout=60, interval=0.3)
        assert (await _post(bob, "/api/chat/mark-read", cid, opening))[0] == 200
        since = (await _sync(witness_mx, None, limit=1))["next_batch"]
        matrix_view = LiveTimeline(witness_mx, room_id, since)
        rest_queue = [f"rest {i:04d}" for i in range(rest)]
        matrix_queue = [f"matrix {i:04d}" for i in range(matrix)]

        async def rest_worker() -> None:
            while rest_queue:
                content = rest_queue.pop(0)
                for _ in range(100):
                    status, body = await alice.send(cid, content, client_message_id=content)
                    if status == 201:
                        break
                    assert status in RETRYABLE, (status, body)
                    await asyncio.sleep(0.2)

        async def matrix_worker(n: int) -> None:
            while matrix_queue:
                content = matrix_queue.pop(0)
                await matrix_send(carol_mx, room_id, content, txn_id=f"{n}-{content}")

        try:
            await asyncio.wait_for(
                asyncio.gather(
                    *(rest_worker() for _ in range(workers)),
                    *(matrix_worker(n) for n in range(workers)),
                ),
                timeout=1200,
            )
            # After the burst in Matrix's order: once its transaction is in, so is every
            # earlier one (Synapse sends them in stream order), so every position is final.
            await matrix_send(carol_mx, room_id, "closing", txn_id=unique("closing"))
            timeline = await matrix_view.until(rest + matrix + 1)
            await matrix_view.close()
            assert len(timeline) == rest + matrix + 1, len(timeline)
            ids = [message_id_for_event(e["event_id"]) for e in timeline]

            async def closing_indexed() -> bool:
                page = await bob.page(cid, page=1, limit=1)
                return [m["_id"] for m in page["messages"]] == [ids[-1]]

            await eventually(closing_indexed, timeout=120, interval=0.3)
            live = [m["_id"] for m in await bob.catch_up(cid, ids[0])]
            live_order = [ids[0], *live]
            assert sorted(live_order) == sorted(ids), "the live order lost or doubled messages"
            apart = sum(1 for a, b in zip(ids, live_order, strict=True) if a != b)
            print(f"READ-ORDER sent={len(ids)} live order differs from Matrix's at {apart}")
            readers = (bob, bob_id), (witness, witness_id)
            await _mark_three_places(room_id, cid, ids, readers, witness_mx, watcher)
            await _read_by_follows_matrix(bob, bob_id, cid, ids, len(ids) - 71)
        finally:
            await matrix_view.close()
            await watcher.close()
            await carol_mx.close()
            await witness_mx.close()


async def _mark_three_places(
    room_id: str,
    cid: str,
    ids: list[str],
    readers: tuple[tuple[Chat, str], tuple[Chat, str]],
    witness_mx: AsyncClient,
    watcher: Recorder,
) -> None:
    """Mark-read early, in the middle and 70 from the end of Matrix's timeline: as the CRM
    user through REST, and as the witness from Element. Others sent every message."""
    (bob, bob_id), (witness, witness_id) = readers
    previous = -1
    for at in (len(ids) // 5, len(ids) // 2, len(ids) - 71):
        expected = len(ids) - at - 1  # Matrix's count: the messages after it, from others
        newly_expected = ids[previous + 1 : at + 1]
        status, answer = await _post(bob, "/api/chat/mark-read", cid, ids[at])
        assert status == 200, answer
        assert answer["messageIds"] == newly_expected, "mark-read read another stretch"
        assert await _unread(bob, cid) == (min(expected, UNREAD_CAP),) * 2, (at, expected)
        # The witness marks the same message read from Element: Synapse counts for it.
        event_id = "$" + ids[at]
        await _client_api(witness_mx, "POST", f"rooms/{room_id}/receipt/m.read/{event_id}", {})

        # Synapse judges by the receipt once it has taken it in: a moment after the answer
        # (CI saw the count of the previous receipt, 480 for 300, right after it).
        seen: list[int] = []

        async def synapse_counted(expected: int = expected, seen: list[int] = seen) -> bool:
            seen.append(await _notification_count(witness_mx, room_id))
            return seen[-1] == expected

        try:
            await eventually(synapse_counted, timeout=30, interval=0.3)
        except AssertionError as e:
            raise AssertionError(f"Synapse counted {seen[-5:]} at {at}, not {expected}") from e

        async def witness_counted(expected: int = expected) -> bool:
            return await _unread(witness, cid) == (min(expected, UNREAD_CAP),) * 2

        await eventually(witness_counted, timeout=30, interval=0.2)
        # messages_read, to the others' sockets: the same stretch, for each reader (its
        # newest MAX_READ_IDS).
        for reader in (bob_id, witness_id):

            async def announced(reader: str = reader, last: str = ids[at]) -> list[Any]:
                return watcher.of(
                    "messages_read",
                    lambda d: d["readBy"]["user"] == reader and d["messageIds"][-1] == last,
                )

            found = await eventually(announced, timeout=30, interval=0.2)
            assert len(found) == 1 and found[0]["messageIds"] == newly_expected[-MAX_READ_IDS:], (
                f"messages_read of {reader} at {at} is not Matrix's stretch"
            )
        assert await _unread(bob, cid) == (min(expected, UNREAD_CAP),) * 2
        log.warning("mark-read at %d of %d: unread %d as Matrix", at, len(ids), expected)
        previous = at


async def _post(chat: Chat, path: str, cid: str, message_id: str) -> tuple[int, Any]:
    body = {"conversationId": cid, "messageId": message_id}
    async with chat.session.post(chat.url + path, json=body, headers=chat.headers) as resp:
        return resp.status, await resp.json()


async def _read_by_follows_matrix(
    bob: Chat, bob_id: str, cid: str, ids: list[str], last_read: int
) -> None:
    """readBy names the reader on every message up to the receipt in Matrix's order, and on
    none after it."""
    by_id = {m["_id"]: m for m in await bob.history(cid)}
    wrong = [
        (n, message_id)
        for n, message_id in enumerate(ids)
        if (bob_id in {r["user"] for r in by_id[message_id]["readBy"]}) != (n <= last_read)
    ]
    assert not wrong, f"readBy disagrees with Matrix's order at {len(wrong)}: {wrong[:10]}"


@pytest.mark.parametrize("bridge_db", ["postgres", "sqlite"])
@pytest.mark.timeout(900)
async def test_unread_follows_matrix_after_a_concurrent_burst(
    tmp_path: Path, bridge_db: str
) -> None:
    async with fault_stack(
        tmp_path, redis=None, bridge_db="shared" if bridge_db == "postgres" else "sqlite"
    ) as fs:
        await _burst(fs, 300, 300)


@pytest.mark.soak
@pytest.mark.parametrize("bridge_db", ["postgres", "sqlite"])
@pytest.mark.timeout(2400)
async def test_unread_follows_matrix_after_a_2000_message_burst(
    tmp_path: Path, bridge_db: str
) -> None:
    async with fault_stack(
        tmp_path, redis=None, bridge_db="shared" if bridge_db == "postgres" else "sqlite"
    ) as fs:
        await _burst(fs, 1000, 1000, workers=8)
