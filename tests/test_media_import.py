"""Attachments by URL (``attachments.import_from``): fetched from a real HTTP server that the
test starts (the CRM's file server), stored in the Matrix media repo, read back with
matrix-nio as Element. Each refusal answers 4xx and leaves the room's timeline as it was."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from nio import AsyncClient, RoomMessagesResponse

from bridge.api.imports import _named, allowed, check_address, checked
from bridge.context import CONFIG, MATRIX
from bridge.devstack.synapse import free_port
from tests.api_support import api_for, crm_user, media_and_sends, media_path, png, project_chat
from tests.conftest import unique
from tests.helpers import eventually, matrix_user

pytestmark = pytest.mark.integration

HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>\n"


@asynccontextmanager
async def file_server(limit: int) -> AsyncIterator[str]:
    """The CRM's file server on loopback: its base URL (http://127.0.0.1:<port>)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    async def cat(request: web.Request) -> web.Response:
        return web.Response(body=png(4, 3), content_type="image/png")

    async def disguised(request: web.Request) -> web.Response:
        # An HTML page that claims to be a picture: the bytes decide (text/plain).
        return web.Response(body=HTML, content_type="image/png")

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/pdf"})
        await response.prepare(request)
        chunk = b"%PDF-1.4\n" + b"0" * 65527
        for _ in range(limit // len(chunk) + 2):  # no Content-Length: stopped while reading
            await response.write(chunk)
        return response

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(body=png(), content_type="image/png")

    app = web.Application()
    app.router.add_get("/files/cat.png", cat)
    app.router.add_get("/files/report.png", disguised)
    app.router.add_get("/files/huge.pdf", huge)
    app.router.add_get("/files/slow.png", slow)

    async def lazy(request: web.Request) -> web.Response:
        await asyncio.sleep(0.6)  # each well inside the timeout, but not all of them in a row
        return web.Response(body=png(), content_type="image/png")

    app.router.add_get("/files/lazy.png", lazy)
    app.router.add_get("/private/secret.png", cat)

    async def moved_in(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/files/cat.png"})

    async def moved_out(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": f"{base}/private/secret.png"})

    async def moved_up(request: web.Request) -> web.Response:
        # Looks under /files/ as a string, but a client would go to /private/secret.png.
        return web.Response(status=302, headers={"Location": f"{base}/files/../private/secret.png"})

    app.router.add_get("/files/moved-up", moved_up)
    app.router.add_get("/files/moved-in", moved_in)  # a redirect that stays in the list
    app.router.add_get("/files/moved-out", moved_out)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield base
    finally:
        await runner.cleanup()


@contextmanager
def importing(app: web.Application, prefixes: list[str], timeout: float = 10) -> Iterator[None]:
    config = app[CONFIG]
    saved = (config.get("attachments.import_from"), config.get("attachments.import_timeout"))
    config.set("attachments.import_from", prefixes)
    config.set("attachments.import_timeout", timeout)
    try:
        yield
    finally:
        config.set("attachments.import_from", saved[0])
        config.set("attachments.import_timeout", saved[1])


async def element_timeline(element: AsyncClient, room_id: str) -> dict[str, dict[str, Any]]:
    """The room's newest events as Element pages them (from its sync token): content by id."""
    await element.sync(timeout=0, full_state=False)
    resp = await element.room_messages(room_id, start=element.next_batch or "", limit=50)
    assert isinstance(resp, RoomMessagesResponse)
    return {ev.event_id: {**ev.source["content"], "_sender": ev.sender} for ev in resp.chunk}


async def timeline(app: web.Application, room_id: str, as_user: str) -> list[str]:
    """Event ids of the room's messages, newest first, as the homeserver holds them."""
    page = await app[MATRIX].messages(room_id, limit=50, as_user=as_user)
    return [e["event_id"] for e in page["chunk"] if e.get("type") == "m.room.message"]


def send_body(cid: str, url: str, kind: str = "image", **extra: Any) -> dict[str, Any]:
    """What the CRM's page sends after its own upload."""
    attachment = {"url": url, "filename": "x", "originalName": "x", "mimetype": "image/png",
                  "size": 1, **extra}  # fmt: skip
    return {"conversationId": cid, "content": "", "type": kind, "attachments": [attachment],
            "mentions": [], "replyTo": None}  # fmt: skip


async def test_an_allowed_url_is_imported_into_the_media_repo(stack) -> None:
    app, url = stack.app, stack.bridge_url
    # Element is Bob's linked account (a stranger would be removed from a project room).
    element = await matrix_user(stack.synapse, unique("elimp"))
    alice, bob = await asyncio.gather(crm_user(app), crm_user(app, matrix_id=element.user_id))
    conv = await project_chat(app, [alice, bob])
    cid = conv.conversation_id
    limit = int(app[CONFIG]["api.max_upload_size"])
    try:
        await app[MATRIX].invite(conv.room_id, element.user_id)
        await element.join(conv.room_id)
        async with (
            file_server(limit) as files,
            api_for(app, url, alice) as a,
            api_for(app, url, bob) as b,
        ):
            with importing(app, [f"{files}/files/"]):
                body = send_body(cid, f"{files}/files/cat.png", originalName="cat.png")
                status, image, _ = await a.post("/api/chat/send", body)
                assert status == 201, image
                status, moved, _ = await a.post(
                    "/api/chat/send", send_body(cid, f"{files}/files/moved-in")
                )
                assert status == 201, moved
                status, page, _ = await a.post(
                    "/api/chat/send",
                    send_body(cid, f"{files}/files/report.png", "file", originalName="r.png"),
                )
                assert status == 201, page
            got = image["attachments"][0]
            assert image["type"] == "image"
            assert (got["mimetype"], got["size"], got["originalName"]) == (
                "image/png", len(png(4, 3)), "cat.png"
            )  # fmt: skip
            assert got["url"].startswith(f"{url}/api/chat/media/localhost/")
            assert moved["attachments"][0]["mimetype"] == "image/png"
            # The disguised HTML page is stored and served as what its bytes are.
            assert page["attachments"][0]["mimetype"] == "text/plain"

            # Element: an ordinary m.image with the same bytes, and the page as a text file.
            async def seen() -> dict[str, Any]:
                by_id = await element_timeline(element, conv.room_id)
                return by_id if page["eventId"] in by_id else {}

            by_id = await eventually(seen)
            content = by_id[image["eventId"]]
            assert content["msgtype"] == "m.image" and content["url"].startswith("mxc://")
            assert content["info"] == {"mimetype": "image/png", "size": len(png(4, 3))}
            assert (await element.download(mxc=content["url"])).body == png(4, 3)
            text = by_id[page["eventId"]]
            assert text["msgtype"] == "m.file" and text["info"]["mimetype"] == "text/plain"
            assert (await element.download(mxc=text["url"])).body == HTML

            # Bob reads it through his own signed URL; the browser gets text/plain, nosniff.
            listed = (await b.get(f"/api/chat/messages/{cid}"))[1]["messages"]
            bobs = {m["_id"]: m for m in listed}[page["_id"]]["attachments"][0]
            assert media_path(bobs["url"]) == media_path(page["attachments"][0]["url"])
            async with aiohttp.ClientSession() as session, session.get(bobs["url"]) as got_page:
                assert got_page.status == 200 and await got_page.read() == HTML
                assert got_page.headers["Content-Type"].startswith("text/plain")
                assert got_page.headers["X-Content-Type-Options"] == "nosniff"
    finally:
        await element.close()


async def test_refused_imports_answer_4xx_and_send_nothing(stack) -> None:
    app, url = stack.app, stack.bridge_url
    alice = await crm_user(app)
    conv = await project_chat(app, [alice])
    cid = conv.conversation_id
    limit = int(app[CONFIG]["api.max_upload_size"])
    async with file_server(limit) as files, api_for(app, url, alice) as a:
        port = files.rsplit(":", 1)[1]
        listed = [f"{files}/files/"]
        cases = [
            # (prefixes, url, status, errcode, words in the message)
            (listed, f"{files}/private/secret.png", 400, "M_INVALID_PARAM", "import_from"),
            (listed, f"{files}/files/moved-out", 400, "M_IMPORT_FAILED", "redirects outside"),
            (listed, f"{files}/files/moved-up", 400, "M_IMPORT_FAILED", "redirects outside"),
            # Path traversal: what aiohttp would send is /private/secret.png.
            (listed, f"{files}/files/../private/secret.png", 400, "M_INVALID_PARAM", "import_from"),
            (listed, f"{files}/files/%2e%2e/private/secret.png", 400, "M_INVALID_PARAM", "import"),
            (listed, f"{files}/files/huge.pdf", 413, "M_TOO_LARGE", "larger"),
            (listed, f"{files}/files/slow.png", 400, "M_IMPORT_FAILED", "longer than"),
            (listed, f"{files}/files/missing.png", 400, "M_IMPORT_FAILED", "HTTP 404"),
            # localhost is loopback, and this prefix names no address: refused once resolved.
            (
                [f"http://localhost:{port}/files/"],
                f"http://localhost:{port}/files/cat.png",
                400,
                "M_IMPORT_FAILED",
                "not allowed",
            ),
        ]
        before = await timeline(app, conv.room_id, alice.mxid)
        sends = media_and_sends(app)[1]
        for prefixes, target, status, errcode, words in cases:
            with importing(app, prefixes, timeout=1):
                got, error, _ = await a.post("/api/chat/send", send_body(cid, target))
            assert (got, error["errcode"]) == (status, errcode), (target, error)
            assert words in error["message"], error
        # Seven imports of 0.6 s each: one deadline (1.5 s) for all of them, 3 at a time,
        # so the third wave is past it; one after another, each with its own, all would pass.
        body = send_body(cid, f"{files}/files/lazy.png")
        body["attachments"] *= 7
        with importing(app, listed, timeout=1.5):
            got, error, _ = await a.post("/api/chat/send", body)
        assert (got, error["errcode"]) == (400, "M_IMPORT_FAILED"), error
        assert "longer than 1.5 s" in error["message"], error
        # Nothing was sent: not one event in the room, not one send to the homeserver.
        assert media_and_sends(app)[1] == sends
        assert await timeline(app, conv.room_id, alice.mxid) == before
        # With no prefix configured, today's rule: only the bridge's own uploads.
        got, error, _ = await a.post("/api/chat/send", send_body(cid, f"{files}/files/cat.png"))
        assert got == 400 and error["message"] == (
            "Each attachment must be a file returned by /api/chat/upload"
        )


def test_prefix_matching_and_address_rules() -> None:
    listed = ["https://crm.example.com/uploads/", "http://10.0.0.7:8080/files/"]
    assert allowed("https://crm.example.com/uploads/2026/a.png", listed)
    assert not allowed("https://crm.example.com/other/a.png", listed)
    assert not allowed("https://crm.example.com/uploads@evil.net/a.png", listed)
    assert not allowed("https://user@crm.example.com/uploads/a.png", listed)
    assert not allowed("ftp://crm.example.com/uploads/a.png", listed)
    assert allowed("http://10.0.0.7:8080/files/a.png", listed)
    assert allowed("https://CRM.example.com:443/uploads/a%20b.png", listed)
    # Dot segments and encoded dots, slashes or backslashes: aiohttp (yarl) would normalise
    # them away and request a path outside the prefix.
    for traversal in (
        "https://crm.example.com/uploads/../admin/export.csv",
        "https://crm.example.com/uploads/%2e%2e/admin/export.csv",
        "https://crm.example.com/uploads/%2E%2E/admin/export.csv",
        "https://crm.example.com/uploads/.%2e/admin/export.csv",
        "https://crm.example.com/uploads/..%2fadmin/export.csv",
        "https://crm.example.com/uploads/..%5cadmin/export.csv",
        "https://crm.example.com/uploads/..\\admin/export.csv",
        "https://crm.example.com/uploads/./a.png",
        "https://crm.example.com/uploads/..",
        "http://10.0.0.7:8080/files/../../etc/passwd",
        "https://crm.example.com:8443/uploads/a.png",
    ):
        assert not allowed(traversal, listed), traversal
    # What is sent is exactly the URL that was checked.
    sent = checked("https://crm.example.com/uploads/a%20b.png?v=1#top", listed)
    assert sent is not None and str(sent) == "https://crm.example.com/uploads/a%20b.png?v=1"
    # Only the address a prefix names may be private; loopback and the rest stay refused.
    named = _named(listed)
    assert check_address("10.0.0.7", named) and check_address("93.184.216.34", named)
    for refused in ("10.0.0.8", "127.0.0.1", "169.254.169.254", "192.168.1.1", "::1",
                    "::ffff:127.0.0.1", "fe80::1", "0.0.0.0", "100.64.0.1",
                    # 6to4 and NAT64 addresses that embed a private or loopback IPv4 one
                    "2002:a00:1::1", "2002:7f00:1::", "64:ff9b::10.0.0.1",
                    "64:ff9b::127.0.0.1", "64:ff9b::169.254.169.254"):  # fmt: skip
        assert not check_address(refused, named), refused
    for public in ("2002:5db8:d822::1", "2606:4700::1"):
        assert check_address(public, named), public
