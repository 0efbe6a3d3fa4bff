"""Scale-out: two facade processes share fan-out through one Redis; only one of them
receives the appservice transactions."""

from __future__ import annotations

from pathlib import Path

from bridge.context import USERS
from bridge.realtime import REALTIME
from tests.api_support import api_for, token
from tests.conftest import unique
from tests.realtime_support import (
    BridgeProcess,
    Directory,
    Recorder,
    conversation_of,
    facade_config,
    settle,
)


async def test_message_through_one_process_reaches_a_client_on_the_other(
    stack, tmp_path: Path
) -> None:
    app, url_a = stack.app, stack.bridge_url
    directory = Directory(url_a, stack.config["admin_api.token"])
    alice_id = await directory.user("Alice A")
    bob_id = await directory.user("Bob B")
    outsider_id = await directory.user("Olga Outsider")
    project = await directory.project(unique("p"), "Two processes", [alice_id, bob_id], alice_id)
    cid = conversation_of(project)
    alice, bob = await app[USERS].get(alice_id), await app[USERS].get(bob_id)

    process_b = await BridgeProcess(facade_config(stack.config), tmp_path, "facade-b").start()
    on_a = on_b = outsider_on_b = None
    try:
        on_a = await Recorder("alice@A").connect(url_a, token(app, alice))
        on_b = await Recorder("bob@B").connect(process_b.url, token(app, bob))
        outsider_on_b = await Recorder("olga@B").connect(process_b.url, token(app, outsider_id))

        # Sent through A (which also receives the transactions): reaches Bob on B.
        async with api_for(app, url_a, alice) as api:
            status, via_a, _ = await api.post(
                "/api/chat/send", {"conversationId": cid, "content": "sent through A"}
            )
        assert status == 201
        got = await on_b.wait("new_message", lambda m: m["_id"] == via_a["_id"])
        assert got["content"] == "sent through A" and "cursor" in got

        # Sent through B (facade only; its local echo): reaches Alice on A.
        async with api_for(app, process_b.url, bob) as api:
            status, via_b, _ = await api.post(
                "/api/chat/send", {"conversationId": cid, "content": "sent through B"}
            )
        assert status == 201
        await on_a.wait("new_message", lambda m: m["_id"] == via_b["_id"])
        # A socket event on B, fanned out to A.
        await on_b.emit("typing", {"conversationId": cid, "isTyping": True})
        await on_a.wait("user_typing", lambda t: t["userId"] == bob_id and t["isTyping"])

        # Each message once per socket although both the local echo and the transaction saw it.
        await app[REALTIME].drain()
        await settle(1.0)
        for sock in (on_a, on_b):
            ids = [m["_id"] for m in sock.of("new_message")]
            assert sorted(ids) == sorted([via_a["_id"], via_b["_id"]]), (sock.name, ids)
        assert outsider_on_b.of("new_message") == []
        assert outsider_on_b.of("user_typing") == []
    finally:
        for sock in (on_a, on_b, outsider_on_b):
            if sock is not None:
                await sock.close()
        process_b.stop()
