"""Real answers against the models their routes declare (bridge/api/contract.py).

The facade does not validate its answers at run time (the serializers' dicts go straight
to orjson); these tests do, strictly, for every route and for the socket events that carry
the same shapes. Requests are checked by the same models the handlers parse.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from pydantic import TypeAdapter

from bridge.api import history
from bridge.api.contract import SOCKET_EVENTS, Contract, contract_of
from bridge.api.models import DirectBody, Error, HistoryQuery, Message, SendBody, parse
from bridge.api.openapi import facade_routes
from bridge.errors import InvalidParam
from tests.api_support import api_for, crm_user, png, project_chat, token
from tests.helpers import eventually
from tests.realtime_support import Recorder


def test_send_body_is_one_model_for_both_doors() -> None:
    ok = parse(SendBody, {"conversationId": "c", "content": "hi", "replyTo": None})
    assert (ok.type, ok.replyTo, ok.attachments) == ("text", None, None)
    assert parse(SendBody, {"conversationId": "c", "attachments": [{"url": "/u"}]}).content == ""
    for body, message in (
        ({"content": "x"}, "conversationId is required"),
        ({"conversationId": "c", "content": "  "}, "content must not be empty"),
        ({"conversationId": "c", "content": "é" * 13000}, "content is too long"),
        ({"conversationId": "c", "content": 5}, "content: Input should be a valid string"),
        ({"conversationId": "c", "content": "x", "type": "video"}, "type: Input should be"),
        ({"conversationId": "c", "content": "x", "mentions": ["u"] * 51}, "mentions: List"),
        ("not an object", "The request body must be a JSON object"),
    ):
        with pytest.raises(InvalidParam) as caught:
            parse(SendBody, body)
        assert str(caught.value.message).startswith(message), caught.value.message


def test_direct_body_takes_either_name() -> None:
    assert parse(DirectBody, {"userId": "a"}).other == "a"
    assert parse(DirectBody, {"participantId": 7}).other == "7"
    with pytest.raises(InvalidParam, match="userId is required"):
        parse(DirectBody, {})


def test_history_bounds_are_the_handlers() -> None:
    """History checks its query itself (the hot path); the model says the same bounds."""
    schema = HistoryQuery.model_json_schema()["properties"]
    assert schema["limit"]["maximum"] == history.MAX_LIMIT
    assert schema["page"]["maximum"] == history.MAX_PAGE_DEPTH


def _contract(app: Any, method: str, path: str) -> Contract:
    for m, p, route in facade_routes(app.router):
        if (m, p) == (method, path):
            found = contract_of(route.handler)
            assert found is not None
            return found
    raise AssertionError(f"no route {method} {path}")


def _conforms(app: Any, method: str, path: str, status: int, body: Any) -> Any:
    """The answer, validated strictly against the model its route declares for status."""
    contract = _contract(app, method, path)
    shape = contract.ok[status].shape if status in contract.ok else Error
    assert status in contract.ok or status in contract.errors or status in (401, 403, 429)
    return TypeAdapter(shape).validate_python(body, strict=True)


@pytest.mark.integration
async def test_every_answer_matches_its_declared_model(stack) -> None:
    app, url = stack.app, stack.bridge_url
    alice, bob = await asyncio.gather(crm_user(app, "Alice Contract"), crm_user(app, "Bob C"))
    conv = await project_chat(app, [alice, bob])
    cid = conv.conversation_id
    socket = await Recorder("bob").connect(url, token(app, bob))
    try:
        await socket.emit("join_conversation", cid)
        await socket.wait("joined_conversation")
        async with api_for(app, url, alice) as a, api_for(app, url, bob) as b:

            async def call(api: Any, method: str, template: str, body=None, **kw):
                path = kw.pop("path", None) or template.format(conversationId=cid)
                status, answer, _ = await api.call(method.upper(), path, body, **kw)
                _conforms(app, method, template, status, answer)
                return status, answer

            status, first = await call(
                a, "post", "/api/chat/send", {"conversationId": cid, "content": "hi"}
            )
            assert status == 201
            pushed = await socket.wait("new_message", lambda m: m["_id"] == first["_id"])
            TypeAdapter(Message).validate_python(pushed, strict=True)
            # The socket's send parses the same SendBody and answers the same Message.
            sent = await socket.call(
                "send_message",
                {"conversationId": cid, "content": "re", "replyTo": first["_id"],
                 "mentions": [alice.crm_user_id]},
            )  # fmt: skip
            reply = TypeAdapter(Message).validate_python(sent, strict=True)
            assert reply.replyTo is not None and reply.replyTo.id == first["_id"]
            refused = await socket.call("send_message", {"conversationId": cid, "content": 5})
            assert TypeAdapter(Error).validate_python(refused, strict=True).errcode == (
                "M_INVALID_PARAM"
            )
            ref = {"conversationId": cid, "messageId": first["_id"]}
            for route, body in (
                ("react", {**ref, "key": "👍"}),
                ("pin-message", ref),
                ("edit-message", {**ref, "content": "hi again"}),
            ):
                author = a if route == "edit-message" else b
                status, _ = await call(author, "post", f"/api/chat/{route}", body)
                # Pinning needs the power level that project rooms give members (issue 19).
                assert status == 200 or (route, status) == ("pin-message", 403)
            status, _ = await call(
                b, "post", "/api/chat/send",
                {"conversationId": cid, "content": "in thread", "threadId": first["_id"]},
            )  # fmt: skip
            assert status == 201
            status, upload = await call(a, "post", "/api/chat/upload", data=_form(png()))
            assert status == 201
            status, with_file = await call(
                a, "post", "/api/chat/send",
                {"conversationId": cid, "content": "", "attachments": [upload], "type": "image"},
            )  # fmt: skip
            assert status == 201 and with_file["attachments"][0]["url"] == upload["url"]

            async def related() -> bool:
                _, page, _ = await b.get(f"/api/chat/messages/{cid}")
                top = {m["_id"]: m for m in page["messages"]}.get(first["_id"])
                return bool(top and top["reactions"] and top["threadCount"] and top["edited"])

            await eventually(related, timeout=30)
            for template, query in (
                ("/api/chat/conversations", ""),
                ("/api/chat/project", ""),
                ("/api/chat/direct", ""),
                ("/api/chat/messages/{conversationId}", "?limit=10"),
                ("/api/chat/conversations/conversation/{conversationId}", ""),
                ("/api/chat/pinned-messages/{conversationId}", ""),
                ("/api/chat/unread-count", ""),
                ("/api/chat/online-users", ""),
                ("/api/chat/search", "?q=again"),
                ("/api/users", ""),
                ("/api/projects", ""),
                ("/api/auth/me", ""),
            ):
                path = template.format(conversationId=cid) + query
                status, _ = await call(b, "get", template, path=path)
                assert status == 200, path
            status, _ = await call(b, "post", "/api/chat/mark-read", {"conversationId": cid})
            assert status == 200
            for expected in (201, 200):  # made, then found
                status, _ = await call(
                    b, "post", "/api/chat/direct/create",
                    {"participantId": alice.crm_user_id},
                )  # fmt: skip
                assert status == expected
            status, _ = await call(
                b, "post", "/api/chat/delete-message",
                {"conversationId": cid, "messageId": reply.id},
            )  # fmt: skip
            assert status == 200
            # Its message_deleted is validated below when it came; whether it comes is
            # test_relations_matrix's subject (here it did not, within 60 s, in about one run
            # of three under load: reported to the lead, not asserted here).
            status, _ = await call(b, "post", "/api/chat/clear-chat", {"conversationId": cid})
            assert status == 200
            status, _ = await call(
                b, "get", "/api/chat/messages/{conversationId}", path="/api/chat/messages/nope"
            )
            assert status == 404
            # Every event the socket got that carries a model matches it.
            models = {e.name: e.payload for e in SOCKET_EVENTS if e.direction.startswith("server")}
            seen = set()
            for name, data in socket.events:
                if name in models:
                    TypeAdapter(models[name]).validate_python(data, strict=True)
                    seen.add(name)
            assert seen >= {"new_message", "message_sent", "message_update", "error"}
    finally:
        await socket.close()


def _form(data: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="dot.png", content_type="application/octet-stream")
    return form
