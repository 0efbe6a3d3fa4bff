"""One send limit whatever the door (REST or socket), typing throttled before the homeserver,
and rate-limit keys that belong to one deployment."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from bridge.api.plumbing import RATE_LIMITER
from bridge.config import redis_prefix
from bridge.context import HOMESERVER
from bridge.db.conversation import Conversation
from bridge.db.crm_user import CrmUser
from bridge.ids import conversation_id_for_room
from bridge.realtime.service import TYPING
from tests.api_support import api_for, crm_user, project_chat, second_facade, token
from tests.conftest import REDIS_URL
from tests.helpers import eventually
from tests.realtime_support import Recorder, settle


def _cid(conversation: Conversation) -> str:
    return conversation_id_for_room(conversation.room_id)


async def _rest_sends_until_refused(app, url: str, user: CrmUser, cid: str) -> dict:
    limit = app[RATE_LIMITER].send_requests
    async with api_for(app, url, user) as api:
        for i in range(limit):
            status, body, headers = await api.post(
                "/api/chat/send", {"conversationId": cid, "content": f"rest {i}"}
            )
            assert status == 201, body
            assert headers["X-RateLimit-Limit"] == str(limit)
        status, body, headers = await api.post(
            "/api/chat/send", {"conversationId": cid, "content": "one too many"}
        )
    assert status == 429 and body["errcode"] == "M_LIMIT_EXCEEDED", body
    return {**body, "Retry-After": headers["Retry-After"]}


async def _fresh_window(app) -> None:
    """Start a test near the beginning of a fixed window, so it cannot end mid-test."""
    window = app[RATE_LIMITER].window
    if window - time.time() % window < 20:
        await asyncio.sleep(window - time.time() % window + 0.5)


async def test_rest_and_socket_sends_share_one_limit(stack) -> None:
    app, url = stack.app, stack.bridge_url
    alice, bob = await crm_user(app, "Alice RL"), await crm_user(app, "Bob RL")
    cid = _cid(await project_chat(app, [alice, bob]))
    limit = app[RATE_LIMITER].send_requests
    await _fresh_window(app)
    a = await Recorder("alice").connect(url, token(app, alice))
    b = await Recorder("bob").connect(url, token(app, bob))
    try:
        # Alice spends her budget over REST: the socket refuses her next send.
        rest = await _rest_sends_until_refused(app, url, alice, cid)
        answer = await a.call("send_message", {"conversationId": cid, "content": "via socket"})
        assert answer["errcode"] == "M_LIMIT_EXCEEDED" and answer["retryAfter"] >= 1, answer
        assert rest["retryAfter"] == int(rest["Retry-After"]) >= 1, rest
        error = await a.wait("error", lambda e: e.get("errcode") == "M_LIMIT_EXCEEDED")
        assert error == answer
        # The figure: 40 socket sends after the REST 429 (all were accepted before).
        started = time.monotonic()
        answers = [
            await a.call("send_message", {"conversationId": cid, "content": f"burst {i}"})
            for i in range(40)
        ]
        accepted = [x for x in answers if "_id" in x]
        print(f"socket sends after REST 429: {len(accepted)}/40 accepted "
              f"in {time.monotonic() - started:.2f} s")  # fmt: skip
        assert accepted == [] and a.of("message_sent") == []

        # Bob spends his over the socket: REST refuses his next send, and so does the socket.
        for i in range(limit):
            sent = await b.call("send_message", {"conversationId": cid, "content": f"sock {i}"})
            assert sent.get("_id"), sent
        async with api_for(app, url, bob) as api:
            status, body, headers = await api.post(
                "/api/chat/send", {"conversationId": cid, "content": "via rest"}
            )
        assert status == 429 and body["retryAfter"] == int(headers["Retry-After"]), body
        refused = await b.call("send_message", {"conversationId": cid, "content": "again"})
        assert refused["errcode"] == "M_LIMIT_EXCEEDED"
        assert len(b.of("message_sent")) == limit
    finally:
        await a.close()
        await b.close()


async def test_typing_spam_costs_a_couple_of_homeserver_writes(stack) -> None:
    app, url = stack.app, stack.bridge_url
    alice, bob = await crm_user(app, "Alice Typist"), await crm_user(app, "Bob Reader")
    cid = _cid(await project_chat(app, [alice, bob]))
    counter = app[HOMESERVER].writes_by_kind
    a = await Recorder("alice").connect(url, token(app, alice))
    b = await Recorder("bob").connect(url, token(app, bob))
    try:
        before = counter["typing"]
        for _ in range(50):
            await a.emit("typing", {"conversationId": cid, "isTyping": True})
        # Bob sees Alice typing: Synapse got the start.
        await b.wait("user_typing", lambda t: t["userId"] == alice.crm_user_id and t["isTyping"])
        await settle(1.0)
        starts = counter["typing"] - before
        # One; two if the machine is so slow that the 50 emits span a renewal interval.
        assert 1 <= starts <= 2, starts

        # The stop after a written start goes out at once.
        await a.call("typing", {"conversationId": cid, "isTyping": False})
        assert counter["typing"] - before == starts + 1
        await b.wait(
            "user_typing", lambda t: t["userId"] == alice.crm_user_id and not t["isTyping"]
        )

        # A client flapping start/stop 50 times: still a couple of writes, ending stopped.
        # Past the interval, the first start is written and the first stop is sent beside
        # it (emits run concurrently); the stop must still reach Synapse last.
        await settle(app[TYPING].interval)
        flapping = counter["typing"]
        for i in range(50):
            await a.emit("typing", {"conversationId": cid, "isTyping": i % 2 == 0})
        await a.call("typing", {"conversationId": cid, "isTyping": False})
        await settle(4.0)  # past the interval: a trailing start must not appear
        assert counter["typing"] - flapping <= 2, counter["typing"] - flapping
        typed = [t["isTyping"] for t in b.of("user_typing")]
        assert typed[-1] is False, typed
        print(f"typing writes: 50 starts -> {starts}, 50 flaps -> {counter['typing'] - flapping}")
    finally:
        await a.close()
        await b.close()


async def test_deployments_with_different_prefixes_do_not_throttle_each_other(stack) -> None:
    app, url = stack.app, stack.bridge_url
    limit, window = app[RATE_LIMITER].requests, app[RATE_LIMITER].window
    redis = Redis.from_url(REDIS_URL)
    overrides = {"realtime.redis_prefix": "other-deployment"}
    try:
        # Another deployment (its own prefix) on the same Redis as the stack.
        async with second_facade(stack.config, **overrides) as other:
            other_url = other.config["appservice.address"]
            for _attempt in range(2):  # a fixed window may end mid-test: then once more
                user = await crm_user(app, "Shared Redis")
                started = time.time() // window
                async with api_for(app, url, user) as api:
                    for _ in range(limit):
                        assert (await api.get("/api/auth/me"))[0] == 200
                    assert (await api.get("/api/auth/me"))[0] == 429
                    async with api_for(app, other_url, user) as elsewhere:
                        status, _, headers = await elsewhere.get("/api/auth/me")
                    still = (await api.get("/api/auth/me"))[0]
                if time.time() // window == started:
                    break
            # Over the limit here, a full budget there.
            assert still == 429
            assert status == 200 and headers["X-RateLimit-Remaining"] == str(limit - 1)
        ours = [k async for k in redis.scan_iter(f"{redis_prefix(stack.config)}:rl:*")]
        theirs = [k async for k in redis.scan_iter("other-deployment:rl:*")]
        assert any(user.crm_user_id.encode() in k for k in ours)
        assert any(user.crm_user_id.encode() in k for k in theirs)
    finally:
        async for key in redis.scan_iter("other-deployment:*"):
            await redis.delete(key)
        await redis.aclose()


async def test_socket_errors_carry_an_errcode(stack) -> None:
    app, url = stack.app, stack.bridge_url
    alice = await crm_user(app, "Alice Errcode")
    a = await Recorder("alice").connect(url, token(app, alice))
    try:
        answer = await a.call("send_message", {"content": "no conversation"})
        assert answer == {"message": "conversationId is required", "errcode": "M_INVALID_PARAM"}
        await eventually(lambda: _true(a.of("error") == [answer]))
    finally:
        await a.close()


async def _true(value: bool) -> bool:
    return value


async def test_socket_typing_and_join_count_against_the_users_limit(stack) -> None:
    app = stack.app
    alice, bob = await crm_user(app, "Alice Spammer"), await crm_user(app, "Bob Spammed")
    cid = _cid(await project_chat(app, [alice, bob]))
    # A facade with a small budget and a long window (no window ends mid-test).
    limits = {"api.rate_limit.requests": 4, "api.rate_limit.window_seconds": 3600}
    async with second_facade(stack.config, **limits) as facade:
        url = facade.config["appservice.address"]
        a = await Recorder("alice").connect(url, token(facade.app, alice))
        try:
            for _ in range(4):
                typed = await a.call("typing", {"conversationId": cid, "isTyping": True})
                assert typed == {"conversationId": cid, "isTyping": True}, typed
            refused = await a.call("typing", {"conversationId": cid, "isTyping": True})
            assert refused["errcode"] == "M_LIMIT_EXCEEDED" and refused["retryAfter"] >= 1
            error = await a.wait("error", lambda e: e.get("errcode") == "M_LIMIT_EXCEEDED")
            assert error == refused
            # A conversation that does not exist counts too: refusing costs no query.
            for _ in range(4):
                joined = await a.call("join_conversation", {"conversationId": cid})
                assert joined == {"conversationId": cid}, joined
            refused = await a.call("join_conversation", {"conversationId": "nowhere"})
            assert refused["errcode"] == "M_LIMIT_EXCEEDED" and refused["retryAfter"] >= 1
            assert len(a.of("joined_conversation")) == 4
        finally:
            await a.close()
