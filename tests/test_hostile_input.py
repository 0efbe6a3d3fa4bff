"""Hostile input: deep JSON, lone surrogates, junk Socket.IO packets, an 8 KB request line.

Each gets a clear 4xx (or ``error`` / ``connect_error`` on a socket) and costs at most one
WARNING line in the log, never a traceback. Every response names no versions in ``Server``
and says ``nosniff``. The bridge is the session one, running in this process, so its log
records reach ``caplog``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest
from yarl import URL

from bridge import safejson
from tests.api_support import api_for, crm_user, project_chat
from tests.api_support import token as mint
from tests.conftest import unique
from tests.realtime_support import Recorder

pytestmark = pytest.mark.integration

DEEP = 1000
SURROGATE = '"a\\ud800b"'  # the JSON escape of a lone surrogate, as a client sends it


def deep_array(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def assert_our_headers(headers: Any) -> None:
    assert headers.get("X-Content-Type-Options") == "nosniff", dict(headers)
    server = headers.get("Server", "")
    assert server and "aiohttp" not in server and "Python" not in server, server
    assert not any(ch.isdigit() for ch in server), server


async def raw_post(
    session: aiohttp.ClientSession, url: str, body: str, headers: dict[str, str], method="POST"
) -> tuple[int, Any, Any]:
    """Bytes as they are on the wire: no client-side JSON encoder gets to refuse them."""
    headers = {**headers, "Content-Type": "application/json"}
    async with session.request(method, url, data=body.encode(), headers=headers) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


def check_refused(status: int, body: Any, headers: Any, fragment: str) -> None:
    assert status == 400, (status, body)
    assert isinstance(body, dict) and set(body) >= {"message", "errcode"}, body
    assert body["errcode"] == "M_BAD_JSON" and fragment in body["message"], body
    assert_our_headers(headers)


async def test_deep_json_and_lone_surrogates_are_400_on_every_json_route(stack, caplog) -> None:
    caplog.set_level(logging.WARNING)
    app, url, config = stack.app, stack.bridge_url, stack.config
    alice, bob = await crm_user(app), await crm_user(app)
    chat = await project_chat(app, [alice, bob])
    cid = json.dumps(chat.conversation_id)
    user_auth = {"Authorization": f"Bearer {mint(app, alice)}"}
    admin_auth = {"Authorization": f"Bearer {config['admin_api.token']}"}
    hs_auth = {"Authorization": f"Bearer {config['appservice.hs_token']}"}
    deep, deep_obj = deep_array(), '{"a":' * DEEP + "1" + "}" * DEEP
    admin_user = f"{url}/api/admin/v1/users/{unique('u')}"
    # Each route, one body nested 1,000 deep and one with a lone surrogate in a field the
    # route uses (content, clientMessageId, userId, a user's name, an event's body).
    cases = [
        ("/api/chat/send", user_auth, f'{{"conversationId":{cid},"content":{deep}}}', "POST"),
        ("/api/chat/send", user_auth, f'{{"conversationId":{cid},"content":{SURROGATE}}}', "POST"),
        (
            "/api/chat/send",
            user_auth,
            f'{{"conversationId":{cid},"content":"hi","clientMessageId":{SURROGATE}}}',
            "POST",
        ),
        ("/api/chat/mark-read", user_auth, f'{{"conversationId":{cid},"x":{deep_obj}}}', "POST"),
        ("/api/chat/mark-read", user_auth, f'{{"conversationId":{SURROGATE}}}', "POST"),
        ("/api/chat/direct/create", user_auth, f'{{"userId":{deep}}}', "POST"),
        ("/api/chat/direct/create", user_auth, f'{{"userId":{SURROGATE}}}', "POST"),
        (admin_user, admin_auth, f'{{"name":"Deep","email":"d@x.y","x":{deep}}}', "PUT"),
        (admin_user, admin_auth, f'{{"name":{SURROGATE},"email":"s@x.y"}}', "PUT"),
        (admin_user, admin_auth, f'{{{SURROGATE}:1,"name":"Key","email":"k@x.y"}}', "PUT"),
    ]
    txn = f"/_matrix/app/v1/transactions/{unique('txn')}"
    event = (
        '{"type":"m.room.message","room_id":"!r:localhost","event_id":"$e","sender":"@x:localhost",'
        '"origin_server_ts":1,"content":{"msgtype":"m.text","body":%s}}'
    )
    cases += [
        (txn + "a", hs_auth, '{"events":[%s]}' % (event % deep), "PUT"),
        (txn + "b", hs_auth, '{"events":[%s]}' % (event % SURROGATE), "PUT"),
    ]
    async with aiohttp.ClientSession() as session:
        for path, auth, body, method in cases:
            target = path if path.startswith("http") else url + path
            status, answer, headers = await raw_post(session, target, body, auth, method)
            fragment = "surrogate" if SURROGATE in body else "nests"
            check_refused(status, answer, headers, fragment)
    assert tracebacks(caplog) == []


@pytest.mark.filterwarnings("ignore::aiohttp.BadContentDispositionParam")
async def test_upload_filenames_that_are_not_unicode_are_cleaned(stack, caplog) -> None:
    caplog.set_level(logging.WARNING)
    app, url = stack.app, stack.bridge_url
    user = await crm_user(app)
    # A surrogate as UTF-8 bytes, raw and percent-encoded (filename*): never a 500.
    for disposition, expected in (
        (b'filename="a\xed\xa0\x80b.txt"', "ab.txt"),
        (b"filename*=UTF-8''a%ED%A0%80b.txt", "file"),
    ):
        body = (
            b'--b\r\nContent-Disposition: form-data; name="file"; ' + disposition + b"\r\n"
            b"Content-Type: text/plain\r\n\r\nhello\r\n--b--\r\n"
        )
        headers = {"Content-Type": "multipart/form-data; boundary=b"}
        async with api_for(app, url, user) as api:
            status, answer, _ = await api.post("/api/chat/upload", data=body, headers=headers)
        assert status == 201, (status, answer)
        assert answer["originalName"] == expected, answer
        answer["originalName"].encode("utf-8")
    assert tracebacks(caplog) == []


async def test_socket_payloads_deep_or_not_unicode_get_error(stack, caplog) -> None:
    caplog.set_level(logging.WARNING)
    app, url = stack.app, stack.bridge_url
    alice, bob = await crm_user(app), await crm_user(app)
    chat = await project_chat(app, [alice, bob])
    rec = await Recorder("alice").connect(url, mint(app, alice))
    try:
        # A lone surrogate: python-socketio's encoder sends it as the escape \ud800.
        answer = await rec.client.call(
            "send_message",
            {"conversationId": chat.conversation_id, "content": "a\ud800b"},
            timeout=15,
        )
        assert "surrogate" in answer["message"], answer
        assert "surrogate" in (await rec.wait("error", timeout=15))["message"]
        # 1,000 deep: the client's own encoder cannot produce it, so its Engine.IO sends the
        # Socket.IO EVENT packet as text.
        cid = json.dumps(chat.conversation_id)
        payload = f'{{"conversationId":{cid},"content":{deep_array()}}}'
        await rec.client.eio.send(f'2["send_message",{payload}]')
        error = await rec.wait("error", lambda d: "nests" in d["message"], timeout=15)
        assert "64" in error["message"]
        # A junk packet from a connected socket: error too, and the socket still works.
        await rec.client.eio.send('2{"not":"an event"}')
        await rec.wait("error", lambda d: "without a name" in d["message"], timeout=15)
        answer = await rec.client.call(
            "send_message", {"conversationId": chat.conversation_id, "content": "still here"}
        )
        assert answer["content"] == "still here", answer
    finally:
        await rec.close()
    refused = [r for r in caplog.records if "Refused a Socket.IO packet" in r.getMessage()]
    assert len(refused) == 3 and all(r.levelno == logging.WARNING for r in refused)
    assert tracebacks(caplog) == []


async def test_deep_connect_without_token_is_refused_at_once(stack, caplog) -> None:
    caplog.set_level(logging.WARNING)
    ws_url = URL(stack.bridge_url).with_scheme("ws") / "socket.io/"
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(ws_url.with_query(EIO="4", transport="websocket")) as ws,
    ):
        opened = await ws.receive_str(timeout=10)
        assert opened.startswith("0{"), opened
        # Junk before any CONNECT: dropped, the connection stays usable.
        for junk in ("4hello", "49", '42{"a":1}', "4" + deep_array(), "", "x", "4"):
            await ws.send_str(junk)
        await ws.send_bytes(b"\x00\x01")
        await ws.send_str("40" + '{"a":' * DEEP + "1" + "}" * DEEP)
        async with asyncio.timeout(10):
            while not (reply := await ws.receive_str()).startswith("44"):
                assert reply.startswith(("2", "3")), reply  # only a ping may come first
        refused = json.loads(reply[2:])
        assert "nests" in refused["message"] and refused["data"]["errcode"] == "M_BAD_JSON"
    assert tracebacks(caplog) == []
    warnings = [r for r in caplog.records if r.name.startswith(("bridge", "socketio", "engineio"))]
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert len(warnings) <= 9  # one line per bad packet at most


async def test_junk_over_long_polling_is_one_warning_line_each(stack, caplog) -> None:
    caplog.set_level(logging.WARNING)
    base = f"{stack.bridge_url}/socket.io/?EIO=4&transport=polling"
    junk = [
        b"\x00\x01",  # not an Engine.IO packet
        "4a\ud800".encode("utf-8", "surrogatepass"),  # not UTF-8
        b"\x1e\x1e",  # empty packets
        b"b!!!",  # base64 of nothing
        b'451-["upload",{"_placeholder":true,"num":0}]',  # binary event, unconnected
        b"40" + b'{"a":' * DEEP + b"1" + b"}" * DEEP,  # deep CONNECT without a token
    ]
    async with aiohttp.ClientSession() as session:
        async with session.get(base) as resp:
            sid = json.loads((await resp.text())[1:])["sid"]
            assert_our_headers(resp.headers)
        for body in junk:
            async with session.post(f"{base}&sid={sid}", data=body) as resp:
                assert resp.status in (200, 400), resp.status
        async with session.get(f"{base}&sid={sid}") as resp:
            answer = await resp.text()
        assert '44{"message":"The handshake nests deeper than 64 levels"' in answer, answer
        async with session.get(f"{stack.bridge_url}/socket.io/?EIO=9&transport=polling") as resp:
            assert resp.status == 400
    assert tracebacks(caplog) == []
    lines = [r for r in caplog.records if r.name.startswith(("bridge", "socketio", "engineio"))]
    assert all(r.levelno == logging.WARNING for r in lines)
    assert len(lines) <= len(junk) + 3, [r.getMessage() for r in lines]


async def test_request_line_over_8kb_is_one_warning_line(stack, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    caplog.set_level(logging.WARNING)
    url = URL(stack.bridge_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(b"GET /api/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read()  # the server closes the connection after answering
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0].startswith(("HTTP/1.0 400", "HTTP/1.1 400")), lines[0]
    headers = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert_our_headers(headers)
    assert headers["Content-Type"].startswith("application/json")
    assert set(json.loads(body)) == {"message", "errcode"}
    await asyncio.sleep(0.2)  # the log line is written as the response goes out
    mine = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert tracebacks(caplog) == []
    assert len(mine) <= 1, [r.getMessage() for r in mine]
    assert all(len(r.getMessage()) < 200 for r in mine)


async def test_authorization_that_is_not_utf8_is_400_not_500(stack, caplog) -> None:
    caplog.set_level(logging.WARNING)
    url = URL(stack.bridge_url)
    # aiohttp decodes such header bytes into lone surrogates; every auth check encodes them.
    for path in ("/api/auth/me", "/api/admin/v1/users/x", "/_matrix/app/v1/users/@x:localhost"):
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
                + b"Authorization: Bearer a\xed\xa0\x80b\r\n\r\n"
            )
            async with asyncio.timeout(10):
                raw = await reader.read()
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), (path, head[:40])
        assert json.loads(body)["errcode"] == "M_INVALID_PARAM", body
    assert tracebacks(caplog) == []


async def test_every_kind_of_response_says_nosniff_and_no_versions(stack) -> None:
    url = stack.bridge_url
    async with aiohttp.ClientSession() as session:
        for path, kind in (
            ("/health/live", "application/json"),  # JSON
            ("/api/no/such/route", "application/json"),  # an error
            ("/api/chat/conversations", "application/json"),  # 401 from a handler
            ("/api/docs", "text/html"),  # a static page
            ("/socket.io/?EIO=4&transport=polling", "text/plain"),  # Socket.IO's own
        ):
            async with session.get(url + path) as resp:
                assert resp.content_type == kind, (path, resp.content_type)
                assert_our_headers(resp.headers)


def test_safejson_bounds_and_checks_without_recursing() -> None:
    assert safejson.loads("[" * 64 + "]" * 64) is not None
    assert safejson.loads('{"s":"\\ud83d\\ude00","t":"\\\\ud800"}') == {
        "s": "😀",
        "t": "\\ud800",
    }
    assert safejson.loads('["[[[[", "{{{{"]', max_depth=1) == ["[[[[", "{{{{"]
    for bad in ("[" * 65 + "]" * 65, "[" * 1_000_000, '{"k":"\\udc00"}', '{"\\ud800":1}'):
        with pytest.raises(safejson.UnsafeJSON):
            safejson.loads(bad)
    with pytest.raises(safejson.UnsafeJSON, match="too deeply"):
        safejson.loads("[" * 100_000 + "]" * 100_000, max_depth=None)
    with pytest.raises(safejson.UnsafeJSON, match="UTF-8"):
        safejson.loads(b'"\xed\xa0\x80"')  # a surrogate encoded as UTF-8 bytes
