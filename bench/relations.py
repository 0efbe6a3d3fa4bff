"""``GET /api/chat/messages`` with relations, against Synapse's own /messages, in one run.

    .venv/bin/python -m bench.relations [--json out.json] [--requests 60]

A 50-message page (of 60 messages) in which half the messages are edited, reply to the
message before and carry two reactions (25 edits and 50 reactions in the timeline besides).
Interleaved, the same user's puppet asks:

* the facade for the newest 50 messages (relations from the index, edits bundled);
* Synapse for the same page as a Matrix client asks for it: ``/messages`` with the standard
  part of the facade's filter (message types, lazy-loaded members) and a limit that covers
  the 50 messages and the 25 edits among them (``synapse_same_page``: the target's yardstick),
  and, for reference, plain ``limit=50`` (``synapse_limit_50``, which holds fewer messages)
  and the very request the facade makes (``synapse_bridge_request``: the full filter and
  the facade's limit; facade over it is what the bridge adds to its own homeserver call).

Twice: on the devstack's Synapse, which has MSC3874 (the facade's filter leaves edits out),
and on one without it (``without_msc3874``: Synapse returns the edits, the facade drops them).

The client runs in the bridge's own process (the ratio is, if anything, against the facade).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from bench.common import Deadline, base_parser, bench_stack, profiled, report, summary
from bench.facade import bounded, make_user, project_room
from bridge.api.auth import VERIFIER
from bridge.api.history import _FILTER, BATCH
from bridge.chat.service import CHAT
from bridge.context import DATABASE, EVENT_INDEX, MATRIX
from bridge.matrix.homeserver import q

PAGE = 50
# Older messages before the page, so it is a page of a longer history (hasMore is true).
OLDER = 10


async def populate(app: Any, room_id: str, users: list[Any]) -> list[str]:
    matrix = app[MATRIX]
    for i in range(OLDER):
        older = {"msgtype": "m.text", "body": f"older {i}"}
        await matrix.send_event(room_id, "m.room.message", older, as_user=users[i % 4].mxid)
    ids: list[str] = []
    for i in range(PAGE):
        content: dict[str, Any] = {"msgtype": "m.text", "body": f"message {i}"}
        if i % 2 and ids:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": ids[-1]}}
        ids.append(
            await matrix.send_event(room_id, "m.room.message", content, as_user=users[i % 4].mxid)
        )

    async def decorate(i: int) -> None:
        sender = users[i % 4].mxid
        edit = {
            "msgtype": "m.text", "body": f"* message {i}, edited",
            "m.new_content": {"msgtype": "m.text", "body": f"message {i}, edited"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": ids[i]},
        }  # fmt: skip
        await matrix.send_event(room_id, "m.room.message", edit, as_user=sender)
        for j, key in enumerate(("👍", "🎉")):
            reaction = {
                "m.relates_to": {"rel_type": "m.annotation", "event_id": ids[i], "key": key}
            }
            await matrix.send_event(
                room_id, "m.reaction", reaction, as_user=users[(i + j + 1) % 4].mxid
            )

    await bounded(6, [decorate(i) for i in range(1, PAGE, 2)])
    return ids


async def wait_indexed(app: Any, ids: list[str]) -> None:
    deadline = time.monotonic() + 120
    want = (PAGE // 2) * 3
    while time.monotonic() < deadline:
        relations = await app[DATABASE].fetchval(
            "SELECT COUNT(*) FROM relation WHERE rel_type IN ('m.replace', 'm.annotation')"
        )
        if len(await app[EVENT_INDEX].get_many(ids)) == len(ids) and relations >= want:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("the relations never reached the index")


# The standard part of the facade's filter: what a Matrix client can ask of any homeserver.
CLIENT_FILTER = json.dumps(
    {k: v for k, v in json.loads(_FILTER).items() if not k.startswith("org.matrix.")}
)
WITHOUT_MSC3874 = {"experimental_features": {"msc3874_enabled": False}}


async def measure(
    requests: int, synapse_config: dict[str, Any] | None, deadline: Deadline
) -> dict[str, Any]:
    overrides = {"api__rate_limit__requests": 1_000_000}
    async with bench_stack(synapse_config=synapse_config, **overrides) as stack:
        app = stack.app
        users = await bounded(4, [make_user(app, f"r{i}_") for i in range(4)])
        room_id, conversation_id = await project_room(app, users)
        ids = await populate(app, room_id, users)
        await wait_indexed(app, ids)
        reader = users[0]
        bearer = {"Authorization": f"Bearer {app[VERIFIER].mint(reader.crm_user_id)}"}
        as_auth = {"Authorization": f"Bearer {stack.as_token}"}
        hs = stack.config["homeserver.address"]
        messages_url = f"{hs}/_matrix/client/v3/rooms/{q(room_id)}/messages"

        async with aiohttp.ClientSession() as session:

            async def facade() -> float:
                start = time.perf_counter()
                url = f"{stack.bridge_url}/api/chat/messages/{conversation_id}"
                async with session.get(url, params={"limit": str(PAGE)}, headers=bearer) as resp:
                    raw = await resp.read()
                # Stopped where the Synapse side stops, at the bytes: decoding is the client's.
                elapsed = (time.perf_counter() - start) * 1000
                body = json.loads(raw)
                assert resp.status == 200 and len(body["messages"]) == PAGE, body
                decorated = [m for m in body["messages"] if m["edited"]]
                assert len(decorated) == PAGE // 2 and all(m["reactions"] for m in decorated)
                return elapsed

            async def synapse(limit: int, filter_json: str = CLIENT_FILTER) -> float:
                params = {"dir": "b", "limit": str(limit), "filter": filter_json,
                          "user_id": reader.mxid}  # fmt: skip
                start = time.perf_counter()
                async with session.get(messages_url, params=params, headers=as_auth) as resp:
                    await resp.read()
                    assert resp.status == 200
                return (time.perf_counter() - start) * 1000

            for _ in range(5):
                await facade()
                await synapse(PAGE + PAGE // 2)
            # As history._batch asks: the page and its look-ahead, stretched by what the
            # room's last page held besides messages.
            stretch = app[CHAT].history_stretch.get(room_id, 1.0)
            bridge_limit = min(BATCH, int((PAGE + 1) * stretch) + 1)
            calls: dict[str, Callable[[], Awaitable[float]]] = {
                "facade": facade,
                "same_page": lambda: synapse(PAGE + PAGE // 2),
                "limit_50": lambda: synapse(PAGE),
                "bridge_request": lambda: synapse(bridge_limit, _FILTER),
            }
            runs: dict[str, list[float]] = {kind: [] for kind in calls}
            order = list(calls)
            label = "relations" if synapse_config is None else "relations_without_msc3874"
            with profiled(label):
                for i in range(requests):
                    if deadline.passed():
                        break
                    for kind in order[i % 4 :] + order[: i % 4]:
                        runs[kind].append(await calls[kind]())
    f, same, plain, own = (summary(runs[k]) for k in calls)
    return {
        "facade": f,
        "synapse_same_page": same,
        "synapse_limit_50": plain,
        "synapse_bridge_request": own,
        "bridge_request_limit": bridge_limit,
        "p50_ratio_same_page": round(f["p50_ms"] / same["p50_ms"], 3),
        "p50_ratio_limit_50": round(f["p50_ms"] / plain["p50_ms"], 3),
        "p50_ratio_bridge_request": round(f["p50_ms"] / own["p50_ms"], 3),
        "samples_ms": {k: [round(x, 2) for x in v] for k, v in runs.items()},
    }


async def main(args: argparse.Namespace) -> None:
    results = {
        "page": PAGE,
        "edited_replied_reacted": PAGE // 2,
        **await measure(args.requests, None, Deadline(args.time_limit / 2)),
        "without_msc3874": await measure(
            args.requests, WITHOUT_MSC3874, Deadline(args.time_limit / 2)
        ),
    }
    report("GET /messages with relations vs Synapse /messages", results, args.json)


def entry() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--requests", type=int, default=60)
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    entry()
