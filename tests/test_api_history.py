"""History walks over a forked room DAG: concurrent senders give many events one depth.

Eight REST senders across three CRM users and a plain Matrix user send at once, so the
homeserver persists sibling events that share a depth, and some events that it stores later
than others at a lower depth. Walking back with ``before`` and by ``page`` (the homeserver's
topological order) and forward with ``after`` (the live order, the bridge's index) must each
return every message exactly once, with page boundaries landing between siblings many times;
so must a client polling ``after`` while the burst lands, in the same live order, which ends
on the conversation's ``lastMessage``. ``after`` from a message that a later-stored one
precedes topologically must return that one (main's topological ``after`` never did).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import pytest
from nio import RoomSendResponse

from bridge.api.history import MAX_LIMIT
from bridge.context import EVENT_INDEX, HOMESERVER, MATRIX, ROOM_MEMBERS
from bridge.ids import event_id_for_message, message_id_for_event
from tests.api_support import Api, api_for, crm_user, project_chat, second_facade
from tests.conftest import unique
from tests.helpers import eventually, matrix_user
from tests.synapse_lag import LAG_KEY

pytestmark = pytest.mark.integration
log = logging.getLogger("tests.history")

REST_SENDERS = 8
MATRIX_SENDERS = 2
PAGE = 7  # small, so a walk crosses hundreds of boundaries
# Every LAG_EVERY-th Matrix message waits LAG_MS inside Synapse between its creation and its
# storage (tests/synapse_lag.py): it is stored after later messages, at a lower depth.
LAG_EVERY = 3
LAG_MS = 400
LAG_MAX_MS = 5000
PROBES = 5  # after= walks from inverted pairs, each to the end


@dataclass
class Walk:
    name: str
    ids: list[str]
    pages: int
    calls: int = 0  # homeserver requests the facade made for the walk

    def figures(self, sent: set[str]) -> dict[str, int]:
        counts = Counter(self.ids)
        return {
            "sent": len(sent),
            "returned": len(self.ids),
            "missing": len(sent - set(counts)),
            "duplicated": sum(n - 1 for n in counts.values() if n > 1),
            "unknown": len(set(counts) - sent),
        }


async def _walk_pages(api: Api, path: str, bound: int, size: int = PAGE) -> Walk:
    pages: list[list[str]] = []
    for number in range(1, bound + 1):
        status, body, _ = await api.get(path, params={"page": number, "limit": size})
        assert status == 200, body
        pages.append([m["_id"] for m in body["messages"]])
        if not body["hasMore"]:
            break
    else:
        raise AssertionError("page walk did not end")
    return Walk("page", [i for page in reversed(pages) for i in page], len(pages))


async def _walk_before(api: Api, path: str, newest: str, bound: int, size: int = PAGE) -> Walk:
    ids = [newest]
    cursor: str | None = newest
    for pages in range(1, bound + 1):
        status, body, _ = await api.get(path, params={"before": cursor, "limit": size})
        assert status == 200, body
        ids[:0] = [m["_id"] for m in body["messages"]]
        cursor = body["nextCursor"]
        if not body["hasMore"]:
            assert cursor is None
            return Walk("before", ids, pages)
        assert cursor == body["messages"][0]["_id"]
    raise AssertionError("before walk did not end")


async def _walk_after(api: Api, path: str, oldest: str, bound: int, size: int = PAGE) -> Walk:
    ids = [oldest]
    cursor = oldest
    for pages in range(1, bound + 1):
        status, body, _ = await api.get(path, params={"after": cursor, "limit": size})
        assert status == 200, body
        ids += [m["_id"] for m in body["messages"]]
        cursor = body["nextCursor"]
        if not body["hasMore"]:
            return Walk("after", ids, pages)
        assert cursor.startswith("s.")  # an opaque token of the log (a seq)
    raise AssertionError("after walk did not end")


async def _burst_then_walk(stack, total: int, page_size: int = PAGE) -> None:
    app = stack.app
    users = await asyncio.gather(*(crm_user(app, f"Burst {n}") for n in range(3)))
    # A CRM user on Element (linked account): the project room keeps it as a member.
    local = unique("burst")
    linked = await crm_user(app, "Burst Element", matrix_id=f"@{local}:localhost")
    conv = await project_chat(app, [*users, linked])
    element = await matrix_user(stack.synapse, local)
    await app[MATRIX].invite(conv.room_id, element.user_id)
    await element.join(conv.room_id)
    matrix_share = total // 10
    rest_share = total - matrix_share - 1  # one more opens the room before the burst
    cid = conv.conversation_id
    sent: set[str] = set()
    # Its own facade, so hundreds of sends and reads per user pass the rate limiter.
    overrides = {"api.rate_limit.requests": 100000, "api.rate_limit.send_requests": 100000}
    try:
        async with second_facade(stack.config, **overrides) as server:
            base = server.config["appservice.address"]
            async with (
                api_for(server.app, base, users[0]) as a0,
                api_for(server.app, base, users[1]) as a1,
                api_for(server.app, base, users[2]) as a2,
            ):
                apis = [a0, a1, a2]

                async def rest_sender(task: int) -> None:
                    api = apis[task % len(apis)]
                    for n in range(task, rest_share, REST_SENDERS):
                        text = f"r{task}-{n}"
                        send = {"conversationId": cid, "content": text, "clientMessageId": text}
                        for _ in range(20):
                            status, body, _ = await api.post("/api/chat/send", send)
                            if status != 503:
                                break
                            # The homeserver was slow to answer (a loaded machine): retry with
                            # the same clientMessageId, as a frontend does.
                            await asyncio.sleep(0.5)
                        assert status == 201, body
                        sent.add(body["_id"])

                async def matrix_sender(task: int) -> None:
                    for n in range(task, matrix_share, MATRIX_SENDERS):
                        content: dict[str, Any] = {"msgtype": "m.text", "body": f"x{task}-{n}"}
                        if n % LAG_EVERY == 1:
                            # Created now, stored after the messages sent meanwhile.
                            content[LAG_KEY] = LAG_MS
                        resp = await element.room_send(conv.room_id, "m.room.message", content)
                        assert isinstance(resp, RoomSendResponse), resp
                        sent.add(message_id_for_event(resp.event_id))

                path = f"/api/chat/messages/{cid}"
                status, opening, _ = await a0.post(
                    "/api/chat/send", {"conversationId": cid, "content": "opening"}
                )
                assert status == 201, opening
                sent.add(opening["_id"])
                burst_done = asyncio.Event()

                polled: list[tuple[str, list[str], str]] = []  # cursor, returned, next

                async def live_poller() -> Walk:
                    """A client polling ``after`` while the burst lands."""
                    ids, cursor = [opening["_id"]], opening["_id"]
                    for polls in range(1, 20 * total):
                        finished = burst_done.is_set()
                        status, body, _ = await a2.get(
                            path, params={"after": cursor, "limit": PAGE}
                        )
                        assert status == 200, body
                        ids += [m["_id"] for m in body["messages"]]
                        if body["messages"]:
                            returned = [m["_id"] for m in body["messages"]]
                            polled.append((cursor, returned, body["nextCursor"]))
                        cursor = body["nextCursor"]
                        if finished and not body["hasMore"]:
                            return Walk("live after", ids, polls)
                        if not body["messages"]:
                            await asyncio.sleep(0.05)
                    raise AssertionError("live poll did not end")

                started = time.monotonic()
                poller = asyncio.create_task(live_poller())
                try:
                    await asyncio.gather(
                        *(rest_sender(t) for t in range(REST_SENDERS)),
                        *(matrix_sender(t) for t in range(MATRIX_SENDERS)),
                    )
                    sending = time.monotonic() - started
                    # Element's sends answer before their transaction reaches the bridge: the
                    # burst has landed once the index holds every message.
                    index = server.app[EVENT_INDEX]

                    async def all_indexed() -> dict[str, Any]:
                        ids = [event_id_for_message(i) for i in sent]
                        rows = await index.get_many(ids)
                        return rows if len(rows) == len(ids) else {}

                    seqs = await eventually(all_indexed, timeout=60)
                    # And once the homeserver's readers show the newest of them: with
                    # workers a reader lags behind (300 ms in the tests), and a page walk it
                    # answers meanwhile ends in another order than the walks after it.
                    newest_event = max(seqs, key=lambda e: seqs[e].seq)

                    async def readers_caught_up() -> bool:
                        resp = await element.room_messages(conv.room_id, start="", limit=20)
                        return newest_event in {e.event_id for e in getattr(resp, "chunk", [])}

                    await eventually(readers_caught_up, timeout=30, interval=0.1)
                    burst_done.set()
                    live = await asyncio.wait_for(poller, timeout=120)
                finally:
                    poller.cancel()
                assert len(sent) == total
                homeserver = server.app[HOMESERVER]
                bound = total // PAGE + 10
                # History's requests, seen on their way out (the facade's background work
                # also talks to the homeserver).
                history_paths: list[str] = []
                request = homeserver.request

                async def spy(method: str, path: str, **kw: Any) -> Any:
                    if "/context/" in path or path.endswith("/messages"):
                        history_paths.append(path)
                    return await request(method, path, **kw)

                homeserver.request = spy  # type: ignore[method-assign]

                async def counted(walk: Awaitable[Walk]) -> Walk:
                    calls = len(history_paths)
                    done = await walk
                    done.calls = len(history_paths) - calls
                    return done

                started = time.monotonic()
                page = await counted(_walk_pages(a0, path, bound, page_size))
                newest, oldest = page.ids[-1], page.ids[0]
                before = await counted(_walk_before(a1, path, newest, bound))
                after = await counted(_walk_after(a2, path, oldest, bound))
                # Full pages too: a page, its look-ahead and the cursor in one request.
                before_full = await counted(_walk_before(a0, path, newest, bound, MAX_LIMIT))
                after_full = await counted(_walk_after(a0, path, oldest, bound, MAX_LIMIT))
                walking = time.monotonic() - started
                # Messages stored after another one at a lower depth: ``after`` that other
                # one must return them.
                live_order = sorted(sent, key=lambda i: seqs[event_id_for_message(i)].seq)
                lagging = _lagging(page.ids, live_order)
                behind: dict[str, list[str]] = {}
                for cursor, late in lagging[:PROBES]:
                    walked = await _walk_after(a1, path, cursor, bound, MAX_LIMIT)
                    if late not in walked.ids:
                        behind.setdefault(cursor, []).append(late)
                listed = await _conversation(a2, cid)
    finally:
        await element.close()

    walks = {"before": before, "after": after, "page": page, "live after": live}
    figures = {name: w.figures(sent) for name, w in walks.items()}
    per_page = {name: round(w.calls / w.pages, 2) for name, w in walks.items() if w.calls}
    log.warning("history walks of %d messages (send %.1fs, walks %.1fs): %s; homeserver calls "
                "per page %s; %d stored later at a lower depth, %d of %d probed not returned "
                "by after", total, sending, walking, figures, per_page, len(lagging),
                sum(map(len, behind.values())), min(PROBES, len(lagging)))  # fmt: skip
    print(f"LIVE-AFTER sent={total} missing={figures['live after']['missing']} "
          f"duplicated={figures['live after']['duplicated']} lagging={len(lagging)} "
          f"probe_missed={sum(map(len, behind.values()))}")  # fmt: skip
    rank = {message: n for n, message in enumerate(live_order)}
    missed = sorted(rank[m] for m in sent - set(live.ids))
    assert not missed, (
        f"the live after poller missed live-order positions {missed}; polls around them: "
        + str([(rank.get(c), [rank.get(i) for i in r], rank.get(n)) for c, r, n in polled
               if any(abs(rank.get(i, -99) - m) < 8 for i in r for m in missed)])
    )  # fmt: skip
    clean = {"sent": total, "returned": total, "missing": 0, "duplicated": 0, "unknown": 0}
    assert figures == {name: clean for name in walks}
    assert not behind, f"after=<cursor> skipped later messages: {behind}"
    # before and page: the homeserver's topological order.
    assert before.ids == page.ids and before_full.ids == page.ids
    # after, live or not: the live order (the index), ending on lastMessage.
    assert after.ids == live_order and after_full.ids == live_order
    assert live.ids == live_order
    assert (listed["lastMessage"] or {}).get("_id") == live_order[-1]
    # One /context and one /messages per cursor page, and one /messages finding the end.
    assert before_full.calls == 2 * before_full.pages + 1
    # after: per page at most one /context and one /messages window (the rest is /event).
    assert after_full.calls <= 2 * after_full.pages


def _lagging(topological: list[str], live: list[str]) -> list[tuple[str, str]]:
    """(cursor, late) pairs: late comes after cursor in the live order and before it in the
    topological one; each late message once, with the newest such cursor."""
    rank = {message: n for n, message in enumerate(live)}
    pairs = []
    for n, late in enumerate(topological):
        cursors = [c for c in topological[n + 1 :] if rank[c] < rank[late]]
        if cursors:
            pairs.append((max(cursors, key=rank.__getitem__), late))
    return pairs


async def _conversation(api: Api, cid: str) -> dict[str, Any]:
    status, listed, _ = await api.get("/api/chat/conversations")
    assert status == 200, listed
    return next(c for c in listed if c["_id"] == cid)


async def test_cursor_walks_return_every_message_of_a_concurrent_burst(stack) -> None:
    await _burst_then_walk(stack, 350)


@pytest.mark.soak
@pytest.mark.timeout(1200)  # 14.3 min measured on a machine loaded 8-15 on 2 cores
async def test_cursor_walks_return_every_message_of_2000(stack) -> None:
    # page=N rereads N pages from the newest, so larger pages keep that walk affordable.
    await _burst_then_walk(stack, 2000, page_size=50)


async def test_live_after_returns_a_message_stored_later_at_a_lower_depth(stack) -> None:
    """A Matrix user's message that Synapse creates first and stores last (tests/synapse_lag.py)
    while CRM users send concurrently: it sits at a lower depth than messages stored before
    it. A client polling ``after`` all along gets every message exactly once, in the live
    order, which ends on ``lastMessage``; ``after`` from a message stored before the held-back
    one returns it (main's topological ``after`` did neither); ``page`` has them all too."""
    app = stack.app
    users = await asyncio.gather(*(crm_user(app, f"Fork {n}") for n in range(2)))
    local = unique("fork")
    linked = await crm_user(app, "Fork Element", matrix_id=f"@{local}:localhost")
    conv = await project_chat(app, [*users, linked])
    element = await matrix_user(stack.synapse, local)
    cid, path = conv.conversation_id, f"/api/chat/messages/{conv.conversation_id}"
    sent: set[str] = set()
    held_for: list[float] = []
    overrides = {"api.rate_limit.requests": 100000, "api.rate_limit.send_requests": 100000}
    try:
        await app[MATRIX].invite(conv.room_id, element.user_id)
        await element.join(conv.room_id)
        async with (
            second_facade(stack.config, **overrides) as server,
            api_for(server.app, server.config["appservice.address"], users[0]) as a0,
            api_for(server.app, server.config["appservice.address"], users[1]) as a1,
        ):
            status, opening, _ = await a0.post(
                "/api/chat/send", {"conversationId": cid, "content": "opening"}
            )
            assert status == 201, opening
            sent.add(opening["_id"])
            done = asyncio.Event()

            async def poller() -> list[str]:
                """Polls until it has seen every message, or for 20 s after the last send."""
                seen, cursor = [opening["_id"]], opening["_id"]
                deadline = None
                for _ in range(5000):
                    finished = done.is_set()
                    if finished and deadline is None:
                        deadline = time.monotonic() + 20
                    status, body, _ = await a1.get(path, params={"after": cursor, "limit": 5})
                    assert status == 200, body
                    seen += [m["_id"] for m in body["messages"]]
                    cursor = body["nextCursor"]
                    if body["hasMore"]:
                        continue
                    if deadline and (set(sent) <= set(seen) or time.monotonic() > deadline):
                        return seen
                    await asyncio.sleep(0.05)
                raise AssertionError("the poller did not end")

            async def held_back(n: int) -> None:
                # Created now, at the depth after what is stored; stored after the others.
                content = {"msgtype": "m.text", "body": f"held {n}", LAG_KEY: LAG_MAX_MS}
                started = time.monotonic()
                resp = await element.room_send(conv.room_id, "m.room.message", content)
                assert isinstance(resp, RoomSendResponse), resp
                held_for.append(time.monotonic() - started)
                sent.add(message_id_for_event(resp.event_id))

            async def rest_sender(api: Api, n: int) -> None:
                # After the held-back messages were created; one after the other, so each
                # is stored a depth further than the one before (concurrent sends would
                # share a depth with each other and with the held-back ones).
                await asyncio.sleep(0.5)
                for i in range(3):
                    status, body, _ = await api.post(
                        "/api/chat/send", {"conversationId": cid, "content": f"r{n}-{i}"}
                    )
                    assert status == 201, body
                    sent.add(body["_id"])

            polling = asyncio.create_task(poller())
            try:
                await asyncio.gather(
                    held_back(0), held_back(1), rest_sender(a0, 0), rest_sender(a1, 1)
                )
                done.set()
                seen = await asyncio.wait_for(polling, timeout=120)
            finally:
                polling.cancel()
            page = await _walk_pages(a0, path, 10, MAX_LIMIT)
            seqs = await app[EVENT_INDEX].get_many([event_id_for_message(i) for i in sent])
            live_order = sorted(sent, key=lambda i: seqs[event_id_for_message(i)].seq)
            lagging = _lagging(page.ids, live_order)
            skipped = [
                (cursor, late)
                for cursor, late in lagging
                if late not in (await _walk_after(a0, path, cursor, 10, MAX_LIMIT)).ids
            ]
            listed = await _conversation(a1, cid)
    finally:
        await element.close()
    counts = Counter(seen)
    missing, doubled = sent - set(counts), [i for i, n in counts.items() if n > 1]
    print(f"LIVE-AFTER forked: sent={len(sent)} missing={len(missing)} "
          f"duplicated={len(doubled)} lagging={len(lagging)} skipped_by_after={len(skipped)} "
          f"held_for={[round(t, 1) for t in held_for]}")  # fmt: skip
    assert lagging, f"Synapse stored no message later at a lower depth (held {held_for})"
    assert not skipped, f"after=<cursor> skipped a message stored later: {skipped}"
    assert not missing and not doubled, (missing, doubled)
    assert seen == live_order
    assert sorted(page.ids) == sorted(sent) and len(page.ids) == len(sent)
    assert (listed["lastMessage"] or {}).get("_id") == live_order[-1]


async def test_after_shows_what_the_homeserver_shows_the_user(stack) -> None:
    """``after`` reads the index, but which messages a user sees is Synapse's answer: with
    ``history_visibility: joined`` a member who joined later sees nothing from before, as
    ``page`` shows it. A cursor from another conversation is a 404 like an unknown one."""
    app = stack.app
    alice, bob = await crm_user(app, "Vis Alice"), await crm_user(app, "Vis Bob")
    conv = await project_chat(app, [alice])
    other = await project_chat(app, [alice, bob])
    await app[MATRIX].send_state(
        conv.room_id, "m.room.history_visibility", {"history_visibility": "joined"}
    )
    cid, path = conv.conversation_id, f"/api/chat/messages/{conv.conversation_id}"
    async with api_for(app, stack.bridge_url, alice) as a, api_for(app, stack.bridge_url, bob) as b:

        async def send(api: Api, cid: str, text: str) -> str:
            status, body, _ = await api.post(
                "/api/chat/send", {"conversationId": cid, "content": text}
            )
            assert status == 201, body
            return body["_id"]

        early = [await send(a, cid, f"before bob {n}") for n in range(3)]
        elsewhere = await send(a, other.conversation_id, "in another room")
        await app[MATRIX].invite(conv.room_id, bob.mxid)
        await app[MATRIX].join(conv.room_id, as_user=bob.mxid)
        await app[ROOM_MEMBERS].set(conv.room_id, bob.mxid, "join")
        late = [await send(a, cid, f"after bob {n}") for n in range(2)]

        async def indexed() -> bool:
            rows = await app[EVENT_INDEX].get_many([event_id_for_message(i) for i in late])
            return len(rows) == len(late)

        await eventually(indexed, timeout=15)
        shown = (await b.get(path, params={"page": 1, "limit": 50}))[1]
        assert [m["_id"] for m in shown["messages"]] == late
        for cursor in early:  # a cursor Bob cannot see is still a position in the order
            status, body, _ = await b.get(path, params={"after": cursor, "limit": 50})
            assert status == 200, body
            assert [m["_id"] for m in body["messages"]] == late and not body["hasMore"]
        # Alice, there all along, sees everything after the first message.
        status, body, _ = await a.get(path, params={"after": early[0], "limit": 50})
        assert [m["_id"] for m in body["messages"]] == [*early[1:], *late]
        for api in (a, b):
            status, body, _ = await api.get(path, params={"after": elsewhere})
            assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body
