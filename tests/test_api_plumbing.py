"""Rate limits, CORS, the OpenAPI description, and backfilling the index after downtime."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import time

import aiohttp
import pytest
from jsonschema import Draft202012Validator
from redis.asyncio import Redis
from schemathesis.specs.openapi.definitions import OPENAPI_31

import bridge.api
from bridge.api.contract import contract_of
from bridge.api.openapi import facade_routes, spec
from bridge.api.plumbing import RATE_LIMITER
from bridge.api.ratelimit import RateLimiter
from bridge.chat.indexer import backfill, store_receipts
from bridge.context import CONVERSATIONS, DATABASE, EVENT_INDEX, MATRIX, RECEIPTS
from bridge.errors import RateLimited
from bridge.matrix.relations import RELATIONS
from tests.api_support import api_for, crm_user, project_chat, second_facade
from tests.api_support import token as mint
from tests.conftest import REDIS_URL, unique
from tests.helpers import eventually

META_ROUTES = {"/api/openapi.json", "/api/docs"}


async def test_in_process_limiter_counts_per_user_and_route() -> None:
    limiter = RateLimiter(requests=3, window=60, send_requests=1)
    for remaining in ("2", "1", "0"):
        assert (await limiter.hit("u1", "users"))["X-RateLimit-Remaining"] == remaining
    with pytest.raises(RateLimited) as caught:
        await limiter.hit("u1", "users")
    assert caught.value.status == 429
    assert 1 <= int(caught.value.headers["Retry-After"]) <= 60
    assert caught.value.headers["X-RateLimit-Limit"] == "3"
    await limiter.hit("u2", "users")  # another user has their own budget
    await limiter.hit("u1", "send")  # and so has another route, with its own limit
    with pytest.raises(RateLimited):
        await limiter.hit("u1", "send")


async def test_redis_limiter_is_shared_between_processes() -> None:
    redis = Redis.from_url(REDIS_URL)
    prefix = unique("rl")
    try:
        first = RateLimiter(2, 60, 1, redis=redis, prefix=prefix)
        second = RateLimiter(2, 60, 1, redis=redis, prefix=prefix)
        await first.hit("u", "users")
        await second.hit("u", "users")
        with pytest.raises(RateLimited):
            await first.hit("u", "users")
        keys = [k async for k in redis.scan_iter(f"{prefix}:*")]
        assert len(keys) == 1 and 0 < await redis.ttl(keys[0]) <= 61
    finally:
        await redis.aclose()


async def test_redis_failure_falls_back_to_counting_in_process(caplog) -> None:
    redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        limiter = RateLimiter(1, 60, 1, redis=redis, retry_seconds=0)
        assert not limiter.degraded
        with caplog.at_level("WARNING", logger="bridge.api.ratelimit"):
            await limiter.hit("u", "users")
            for _ in range(5):
                with pytest.raises(RateLimited):
                    await limiter.hit("u", "users")
        # Degraded (readiness can say so), with one warning for the transition.
        assert limiter.degraded
        assert [r.levelname for r in caplog.records] == ["WARNING"], caplog.records
        # Redis answers again: used again, and no longer degraded.
        limiter.redis = Redis.from_url(REDIS_URL)
        try:
            await limiter.hit(unique("u"), "users")
            assert not limiter.degraded
        finally:
            await limiter.redis.aclose()
    finally:
        await redis.aclose()


@pytest.mark.integration
async def test_http_rate_limit_answers_429_with_headers(stack) -> None:
    app = stack.app
    assert app[RATE_LIMITER].redis is not None  # the stack runs with Redis
    user = await crm_user(app)
    async with api_for(app, stack.bridge_url, user) as api:
        statuses = []
        for _ in range(121):
            status, body, headers = await api.get("/api/auth/me")
            statuses.append(status)
        assert statuses[:120] == [200] * 120
        assert status == 429 and body["errcode"] == "M_LIMIT_EXCEEDED"
        assert int(headers["Retry-After"]) >= 1
        assert headers["X-RateLimit-Limit"] == "120" and headers["X-RateLimit-Remaining"] == "0"
        # Other routes keep their own budget.
        assert (await api.get("/api/users"))[0] == 200


@pytest.mark.integration
async def test_a_read_over_a_shared_limit_is_refused_then_not_even_started(stack) -> None:
    """A GET starts while Redis counts it; over the limit its page is dropped for the 429,
    and once this process knows the user is spent, the next one never reaches Synapse."""
    app = stack.app
    limiter = app[RATE_LIMITER]
    member = await crm_user(app)
    conversation = await project_chat(app, [member])
    path = f"/api/chat/messages/{conversation.conversation_id}"
    if (left := limiter.window - time.time() % limiter.window) < 10:  # one window for all
        await asyncio.sleep(left + 0.1)
    # Another facade process (same Redis, same prefix) used up the user's budget.
    other = RateLimiter(
        limiter.requests, limiter.window, limiter.send_requests,
        redis=limiter.redis, prefix=limiter.prefix,
    )  # fmt: skip
    for _ in range(limiter.limit_for("messages")):
        await other.hit(member.crm_user_id, "messages")
    async with api_for(app, stack.bridge_url, member) as api:
        assert not limiter.spent(member.crm_user_id, "messages")
        status, body, headers = await api.get(path)
        assert status == 429 and body["errcode"] == "M_LIMIT_EXCEEDED", body
        assert "messages" not in body and int(headers["Retry-After"]) >= 1
        assert limiter.spent(member.crm_user_id, "messages")
        asked = app[MATRIX].hs.requests
        status, body, _ = await api.get(path)
        assert status == 429 and body["errcode"] == "M_LIMIT_EXCEEDED"
        assert app[MATRIX].hs.requests == asked  # refused before the homeserver was asked
        # The user's other routes keep their own budget.
        assert (await api.get("/api/auth/me"))[0] == 200


@pytest.mark.integration
async def test_cors_allows_only_configured_origins(stack) -> None:
    user = await crm_user(stack.app)
    async with (
        second_facade(stack.config, **{"api.cors_origins": ["https://crm.example"]}) as server,
        aiohttp.ClientSession() as session,
    ):
        base = server.config["appservice.address"]
        preflight = {
            "Origin": "https://crm.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        }
        async with session.options(base + "/api/chat/send", headers=preflight) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "https://crm.example"
            allowed = resp.headers["Access-Control-Allow-Headers"].lower()
            assert "authorization" in allowed
        evil = {**preflight, "Origin": "https://evil.example"}
        async with session.options(base + "/api/chat/send", headers=evil) as resp:
            assert resp.status == 403
            assert "Access-Control-Allow-Origin" not in resp.headers
        token = mint(server.app, user)
        headers = {"Origin": "https://crm.example", "Authorization": f"Bearer {token}"}
        async with session.get(base + "/api/auth/me", headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "https://crm.example"
            assert "X-RateLimit-Remaining" in resp.headers["Access-Control-Expose-Headers"]


@pytest.mark.integration
async def test_openapi_matches_the_router(stack) -> None:
    """Every facade route is declared (or says why not), every declared handler is routed,
    and the document served is the one generated from the declarations."""
    routed = facade_routes(stack.app.router)
    undeclared = [(m, p) for m, p, route in routed if contract_of(route.handler) is None]
    assert undeclared == []
    served = {
        (method, path)
        for method, path, route in routed
        if path not in META_ROUTES and contract_of(route.handler).documented
    }
    assert {p for m, p, r in routed if not contract_of(r.handler).documented} == META_ROUTES
    document = spec(stack.app.router)
    # Valid OpenAPI 3.1 (the 3.1 meta-schema), and every schema valid JSON Schema 2020-12.
    assert [e.message for e in Draft202012Validator(OPENAPI_31).iter_errors(document)] == []
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    described = {(method, path) for path, item in document["paths"].items() for method in item}
    assert served == described
    handlers = {route.handler for _, _, route in routed}
    declared = [f for f in _declared_handlers() if f not in handlers]
    assert declared == [], "declared but not routed"
    async with aiohttp.ClientSession() as session:
        async with session.get(stack.bridge_url + "/api/openapi.json") as resp:
            assert resp.status == 200 and (await resp.json()) == document
        async with session.get(stack.bridge_url + "/api/docs") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            assert "/api/openapi.json" in await resp.text()


def _declared_handlers() -> list[object]:
    """Every function of bridge.api that carries a declaration."""
    found = []
    for info in pkgutil.iter_modules(bridge.api.__path__, "bridge.api."):
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, callable):
            if contract_of(value) is not None and value.__module__ == info.name:
                found.append(value)
    return found


@pytest.mark.integration
async def test_backfill_restores_what_was_missed(stack) -> None:
    app = stack.app
    alice, bob = await asyncio.gather(crm_user(app), crm_user(app))
    conv = await project_chat(app, [alice, bob])
    event_ids = [
        await app[MATRIX].send_event(
            conv.room_id, "m.room.message", {"msgtype": "m.text", "body": f"b{i}"},
            as_user=alice.mxid,
        )
        for i in range(3)
    ]  # fmt: skip
    reaction = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_ids[0], "key": "👍"}}
    reaction_id = await app[MATRIX].send_event(
        conv.room_id, "m.reaction", reaction, as_user=bob.mxid
    )
    await eventually(lambda: app[EVENT_INDEX].get(event_ids[-1]))
    await eventually(lambda: app[RELATIONS].store.get(reaction_id, "m.annotation"))
    # Downtime, as far as the index knows: the last two messages and the reaction never arrived.
    db = app[DATABASE]
    for event_id in event_ids[1:]:
        await db.execute("DELETE FROM room_event WHERE event_id=$1", event_id)
    await db.execute("DELETE FROM relation WHERE event_id=$1", reaction_id)
    await db.execute(
        "UPDATE conversation SET last_event_id=$2, last_activity=0 WHERE room_id=$1",
        conv.room_id, event_ids[0],
    )  # fmt: skip
    assert await app[EVENT_INDEX].count(conv.room_id) == 1
    assert await backfill(app) >= 2
    assert await app[EVENT_INDEX].count(conv.room_id) == 3
    indexed = await app[EVENT_INDEX].get_many(event_ids)
    assert indexed[event_ids[1]].seq < indexed[event_ids[2]].seq
    assert (await app[CONVERSATIONS].get(conv.conversation_id)).last_event_id == event_ids[2]
    async with api_for(app, stack.bridge_url, bob) as b:
        listed = [
            c
            for c in (await b.get("/api/chat/conversations"))[1]
            if c["_id"] == conv.conversation_id
        ]
        assert listed[0]["unreadCount"] == 3 and listed[0]["lastMessage"]["content"] == "b2"
        page = (await b.get(f"/api/chat/messages/{conv.conversation_id}"))[1]["messages"]
        assert page[0]["reactions"] == [
            {"key": "👍", "count": 1, "users": [bob.crm_user_id], "me": True}
        ]
    # A receipt for a backfilled event now counts.
    moved = await store_receipts(
        app, conv.room_id, {event_ids[2]: {"m.read": {bob.mxid: {"ts": int(time.time() * 1000)}}}}
    )
    assert moved == 1
    assert (await app[RECEIPTS].get(conv.room_id, bob.mxid)).event_id == event_ids[2]
