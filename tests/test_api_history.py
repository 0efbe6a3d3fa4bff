"""History walks over a forked room DAG: concurrent senders give many events one depth.

Eight REST senders across three CRM users and a plain Matrix user send at once, so the
homeserver persists sibling events that share a depth. Walking back with ``before``,
forward with ``after`` and by ``page`` must each return every message exactly once, in the
same order, with page boundaries landing between siblings many times; so must a client
polling ``after`` while the burst lands.
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
from bridge.context import HOMESERVER, MATRIX
from bridge.ids import message_id_for_event
from tests.api_support import Api, api_for, crm_user, project_chat, second_facade
from tests.conftest import unique
from tests.helpers import matrix_user

pytestmark = pytest.mark.integration
log = logging.getLogger("tests.history")

REST_SENDERS = 8
MATRIX_SENDERS = 2
PAGE = 7  # small, so a walk crosses hundreds of boundaries


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
        assert cursor == body["messages"][-1]["_id"]
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
                        status, body, _ = await api.post(
                            "/api/chat/send", {"conversationId": cid, "content": f"r{task}-{n}"}
                        )
                        assert status == 201, body
                        sent.add(body["_id"])

                async def matrix_sender(task: int) -> None:
                    for n in range(task, matrix_share, MATRIX_SENDERS):
                        content = {"msgtype": "m.text", "body": f"x{task}-{n}"}
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
    finally:
        await element.close()

    walks = {"before": before, "after": after, "page": page, "live after": live}
    figures = {name: w.figures(sent) for name, w in walks.items()}
    per_page = {name: round(w.calls / w.pages, 2) for name, w in walks.items() if w.calls}
    log.warning("history walks of %d messages (send %.1fs, walks %.1fs): %s; homeserver calls "
                "per page %s", total, sending, walking, figures, per_page)  # fmt: skip
    clean = {"sent": total, "returned": total, "missing": 0, "duplicated": 0, "unknown": 0}
    assert figures == {name: clean for name in walks}
    assert before.ids == page.ids
    assert after.ids == page.ids
    assert live.ids == page.ids
    assert before_full.ids == page.ids and after_full.ids == page.ids
    # One /context and one /messages per cursor page, and one /messages finding the end.
    assert before_full.calls == after_full.calls == 2 * before_full.pages + 1


async def test_cursor_walks_return_every_message_of_a_concurrent_burst(stack) -> None:
    await _burst_then_walk(stack, 350)


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_cursor_walks_return_every_message_of_2000(stack) -> None:
    # page=N rereads N pages from the newest, so larger pages keep that walk affordable.
    await _burst_then_walk(stack, 2000, page_size=50)
