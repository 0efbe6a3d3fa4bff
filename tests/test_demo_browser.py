"""/demo in headless Chromium: two CRM users in two pages, and an Element-like Matrix user.

The pages run the shipped app.js against a facade with the demo option on (the session's
Synapse, PostgreSQL and Redis behind it), so everything they show came through the public
REST and Socket.IO API. Screenshots of both pages are saved under test-artifacts/.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nio import AsyncClient, RoomSendResponse
from playwright.async_api import Browser, Page, async_playwright, expect

from bridge.context import ROOM_MEMBERS
from bridge.ids import room_id_for_conversation
from bridge.realtime import REALTIME
from tests.api_support import api_for, png, second_facade
from tests.conftest import unique
from tests.helpers import eventually, matrix_user
from tests.realtime_support import Directory, conversation_of

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts"))
# Each wait is a few hundred ms on a quiet machine; a receipt's trip through Synapse has
# taken over 15 s on 2 cores at load average 16, so allow 30.
WAIT_MS = 30000
# A first page (PAGE) taller than the window, and older messages (HISTORY - PAGE) that
# only scrolling up fetches.
HISTORY = 16
PAGE = 12
expect.set_options(timeout=WAIT_MS)


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        # Debian's Chromium: Playwright's own browser download is not reachable here.
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield browser
        finally:
            await browser.close()


async def bare_img_loads(browser: Browser, src: str, width: int) -> None:
    """A page of another origin with nothing but <img src>: no header, no cookie, no token.
    The signed URL loads; the same URL with its signature altered does not."""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        tampered = src[:-2] + ("AA" if not src.endswith("AA") else "BB")
        await page.set_content(f'<img id="ok" src="{src}"><img id="bad" src="{tampered}">')
        await page.wait_for_function(
            "w => { const i = document.getElementById('ok'); "
            "return i.complete && i.naturalWidth === w; }",
            arg=width,
        )
        await page.wait_for_function("document.getElementById('bad').complete")
        assert await page.evaluate("document.getElementById('bad').naturalWidth") == 0
    finally:
        await context.close()


async def open_page(browser: Browser, url: str) -> Page:
    # One context per user: separate sessionStorage, as two people on two machines.
    context = await browser.new_context(viewport={"width": 1100, "height": 640})
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(url)
    await expect(page.locator("body")).to_have_attribute("data-socket", "connected")
    return page


def online_dot(page: Page, crm_user_id: str):
    return page.locator(f'#people li[data-id="{crm_user_id}"] .dot.online')


async def bodies(page: Page) -> list[str]:
    return await page.locator("#messages .msg .body .text").all_inner_texts()


def message(page: Page, text: str):
    """The message whose text is exactly ``text`` ("History 1" is not "History 12")."""
    return page.locator("#messages .msg").filter(
        has=page.locator(".body .text").get_by_text(text, exact=True)
    )


async def test_two_users_chat_and_a_matrix_reply_shows_in_both_pages(
    stack, browser: Browser, artifacts: Path
) -> None:
    started = time.monotonic()
    laps: list[str] = []

    def lap(name: str) -> None:
        laps.append(f"{name} {time.monotonic() - started:.1f}")

    directory = Directory(stack.bridge_url, stack.config["admin_api.token"])
    element: AsyncClient = await matrix_user(stack.synapse, unique("el"))
    try:
        alice = await directory.user("Alice Demo")
        bob = await directory.user("Bob Demo")
        carol = await directory.user("Carol Element", matrix_id=element.user_id)
        project = await directory.project(unique("p"), "Launch plan", [alice, bob, carol], alice)
        room_id, cid = project["roomId"], conversation_of(project)
        await element.join(room_id)
        await eventually(
            lambda: _joined(stack.app, room_id, element.user_id), timeout=WAIT_MS / 1000
        )
        async with api_for(stack.app, stack.bridge_url, alice) as api:
            for n in range(1, HISTORY + 1):
                status, _, _ = await api.post(
                    "/api/chat/send", {"conversationId": cid, "content": f"History {n}"}
                )
                assert status == 201

        lap("directory+history")
        overrides = {"demo.enabled": True, "demo.sign_in": True}
        async with second_facade(stack.config, **overrides) as facade:
            base = facade.config["appservice.address"] + "/demo"
            page_a = await open_page(browser, f"{base}?as={alice}&c={cid}&limit={PAGE}")
            page_b = await open_page(browser, f"{base}?as={bob}&limit={PAGE}")
            lap("pages")

            # Bob has not opened the conversation yet: its unread badge counts Alice's history.
            entry_b = page_b.locator(f'#conversations li[data-id="{cid}"]')
            await expect(entry_b.locator(".badge")).to_have_text(str(HISTORY))
            # Online dots: each sees the other online.
            await expect(online_dot(page_a, bob)).to_be_visible()
            await expect(online_dot(page_b, alice)).to_be_visible()

            # Bob opens it: the newest page, then the rest by scrolling up (?before=).
            await entry_b.click()
            await expect(message(page_b, f"History {HISTORY}")).to_be_visible()
            await expect(message(page_b, "History 1")).to_have_count(0)
            await page_b.locator("#messages").evaluate("box => { box.scrollTop = 0; }")
            await expect(message(page_b, "History 1")).to_be_attached()
            assert await page_b.locator("#messages .msg").count() == HISTORY
            await expect(entry_b.locator(".badge")).to_have_count(0)

            lap("scroll")
            # Alice types: Bob sees it, then the message.
            await page_a.locator("#text").press_sequentially("Hello Bob", delay=20)
            await expect(page_b.locator("#typing")).to_have_text("Alice Demo is typing…")
            await page_a.locator("#text").press("Enter")
            await expect(message(page_b, "Hello Bob")).to_be_visible()
            await expect(page_b.locator("#typing")).to_have_text("")
            # Bob has it open, so it is read: Alice's tick turns to ✓✓.
            await expect(message(page_a, "Hello Bob").locator(".tick.read")).to_have_text("✓✓")

            lap("typing+read")
            # Bob answers; Alice reads it live.
            await page_b.locator("#text").fill("Hi Alice, looks good")
            await page_b.locator("#text").press("Enter")
            await expect(message(page_a, "Hi Alice, looks good")).to_be_visible()

            # Bob sends a picture: uploaded, then drawn on Alice's page by a bare <img src>,
            # its URL signed for Alice (no token in it).
            await page_b.locator("#file").set_input_files(
                files=[{"name": "chart.png", "mimeType": "image/png", "buffer": png(96, 48)}]
            )
            await page_b.locator("#text").press("Enter")
            picture = page_a.locator('#messages .msg img[alt="chart.png"]')
            await expect(picture).to_be_visible()
            await page_a.wait_for_function(
                "img => img.complete && img.naturalWidth === 96", arg=await picture.element_handle()
            )
            src = await picture.get_attribute("src")
            origin = facade.config["appservice.address"]
            assert src and src.startswith(f"{origin}/api/chat/media/") and "sig=" in src
            assert "token=" not in src
            await bare_img_loads(browser, src, 96)
            lap("answer+file")
            # The Matrix user replies to Alice's message, as Element does (m.in_reply_to).
            async with api_for(stack.app, stack.bridge_url, alice) as api:
                _, page, _ = await api.get(f"/api/chat/messages/{cid}?limit=5")
            hello = next(m for m in page["messages"] if m["content"] == "Hello Bob")
            sent = await element.room_send(
                room_id,
                "m.room.message",
                {
                    "msgtype": "m.text",
                    "body": "Reply from Element",
                    "m.relates_to": {"m.in_reply_to": {"event_id": hello["eventId"]}},
                },
            )
            assert isinstance(sent, RoomSendResponse), sent
            for p in (page_a, page_b):
                reply = message(p, "Reply from Element")
                await expect(reply).to_be_visible()
                await expect(reply.locator(".sender")).to_have_text("Carol Element")
            async with api_for(stack.app, stack.bridge_url, bob) as api:
                _, page, _ = await api.get(f"/api/chat/messages/{cid}?limit=1")
            served = page["messages"][-1]
            assert served["content"] == "Reply from Element"
            if served.get("replyTo"):
                # A bridge that serves replyTo: the pages quote the message it answers.
                for p in (page_a, page_b):
                    quote = message(p, "Reply from Element").locator(".reply-quote")
                    await expect(quote).to_contain_text("Hello Bob")

            lap("matrix reply")
            # Each page holds what it loaded, once and in order: Bob's receipt updates
            # (message_update) for messages Alice has not loaded do not slip in at the bottom.
            live = ["Hello Bob", "Hi Alice, looks good", "Reply from Element"]
            history = [f"History {n}" for n in range(1, HISTORY + 1)]
            assert await bodies(page_b) == history + live
            shown_a = await bodies(page_a)  # the newest PAGE, or more if it fetched older
            loaded = len(shown_a) - len(live)
            assert loaded >= PAGE and shown_a == history[-loaded:] + live
            # The screenshots show a typing notice too (docs/demo.png is Bob's page).
            await page_a.locator("#text").press_sequentially("Thanks both", delay=20)
            await expect(page_b.locator("#typing")).to_have_text("Alice Demo is typing…")
            await page_a.screenshot(path=artifacts / "demo-alice.png")
            await page_b.screenshot(path=artifacts / "demo-bob.png")
            assert page_a.errors == [] and page_b.errors == []  # type: ignore[attr-defined]
            lap("screenshots")
            # Closed before the facade stops, which would otherwise wait for their sockets.
            await page_a.context.close()
            await page_b.context.close()
    finally:
        await element.close()
    print(f"DEMO browser test took {time.monotonic() - started:.1f} s ({', '.join(laps)})")


async def _joined(app, room_id: str, mxid: str) -> bool:
    return await app[ROOM_MEMBERS].get(room_id, mxid) == "join"


async def test_page_renews_its_dev_token_and_draws_message_changes(stack, browser: Browser) -> None:
    """The bridge closes a socket whose token expired; the page mints another and goes on.
    Then the fields of edits, reactions, pins, replies and deletes are drawn."""
    directory = Directory(stack.bridge_url, stack.config["admin_api.token"])
    dana = await directory.user("Dana Demo")
    eli = await directory.user("Eli Demo")
    project = await directory.project(unique("p"), "Short tokens", [dana, eli], dana)
    cid = conversation_of(project)
    ttl = 3
    overrides = {"demo.enabled": True, "demo.sign_in": True, "demo.token_ttl": ttl}
    async with second_facade(stack.config, **{**overrides, "auth.leeway": 0}) as facade:
        base = facade.config["appservice.address"] + "/demo"
        page = await open_page(browser, f"{base}?as={dana}&c={cid}")
        first_token = await page.evaluate("window.demo.token")
        # Once it expires, the bridge closes the socket; the page mints a new token...
        await page.wait_for_function("old => window.demo.token !== old", arg=first_token)
        # ...and connects again with it.
        await expect(page.locator("body")).to_have_attribute("data-socket", "connected")
        # REST with the old token would be a 401; the page sends and receives as before.
        await page.locator("#text").fill("Still here")
        await page.locator("#text").press("Enter")
        await expect(message(page, "Still here")).to_be_visible()
        async with api_for(stack.app, stack.bridge_url, eli) as api:
            status, _, _ = await api.post(
                "/api/chat/send", {"conversationId": cid, "content": "Me too"}
            )
            assert status == 201
        await expect(message(page, "Me too")).to_be_visible()
        # Read at once, being open (a reconnect in between included): no badge.
        badge = page.locator(f'#conversations li[data-id="{cid}"] .badge')
        await expect(badge).to_have_count(0)

        # A DM: picked from People, created through /api/chat/direct/create.
        await page.locator(f'#people li[data-id="{eli}"]').click()
        await expect(page.locator("#room-title")).to_have_text("Eli Demo")
        await page.locator("#text").fill("Just us")
        await page.locator("#text").press("Enter")
        await expect(message(page, "Just us")).to_be_visible()
        dm = page.locator('#conversations li[data-type="direct"]')
        await expect(dm.locator(".title")).to_have_text("Eli Demo")
        await page.locator(f'#conversations li[data-id="{cid}"]').click()
        await expect(message(page, "Still here")).to_be_visible()

        # Edits, reactions, pins, replies and deletes, in the shapes of issue 8, fed to the
        # handlers that message_update, new_message and message_deleted call (the bridge
        # does not send these fields yet, and the page must draw them once it does).
        await page.evaluate(
            """([cid, eli]) => {
                const m = window.demo.messages.get(cid).find((x) => x.content === "Still here");
                updateMessage({ ...m, content: "Still here, edited", edited: true,
                  isPinned: true, reactions: [{ key: "👍", count: 2, users: [eli], me: true }] });
                upsertMessage({ ...m, _id: m._id + "r", content: "A reply",
                  replyTo: { _id: m._id, content: "Still here, edited", sender: m.sender } });
            }""",
            [cid, eli],
        )
        edited = message(page, "Still here, edited")
        await expect(edited.locator(".edited")).to_have_text(" (edited)")
        await expect(edited.locator(".reaction.me")).to_have_text("👍 2")
        await expect(edited.locator(".pin")).to_be_visible()
        await expect(page.locator("#pins")).to_contain_text("Still here, edited")
        quote = message(page, "A reply").locator(".reply-quote")
        await expect(quote).to_have_text("Dana Demo Still here, edited")
        await page.evaluate(
            """(cid) => {
                const m = window.demo.messages.get(cid).find((x) => x.edited);
                onMessageDeleted({ conversationId: cid, messageId: m._id });
            }""",
            cid,
        )
        await expect(edited).to_have_count(0)
        await expect(page.locator("#pins")).to_be_hidden()

        # resync from the bridge (a lane dropped a job): the page reloads the history, so
        # the message it dropped locally above is back as the bridge holds it, and the reply
        # drawn only locally is gone.
        await expect(message(page, "Still here")).to_have_count(0)
        realtime = facade.app[REALTIME]
        await realtime.fanout.resync(room_id_for_conversation(cid), "failed")
        await expect(message(page, "Still here")).to_be_visible(timeout=15000)
        await expect(message(page, "A reply")).to_have_count(0)
        assert page.errors == []  # type: ignore[attr-defined]
        await page.context.close()
