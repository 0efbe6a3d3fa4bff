"""``GET /api/chat/messages`` of a page of files, every URL signed, against Synapse's /messages.

    .venv/bin/python -m bench.media [--json out.json] [--requests 40]

A 50-message page (of 60 messages) in which every message is an image, each its own file in
the media repository: the facade's answer holds 50 attachment URLs, each absolute and signed
for the reader (bridge/chat/media_urls.py: one HMAC per file, one regex pass over the
encoded answer). Interleaved, the same user's puppet asks the facade for the newest 50
messages and Synapse for ``/messages`` with ``limit=50`` (the same page as a Matrix client
asks for it). Also, in this process: the signing pass alone on that answer, beside its
JSON encoding (what it costs on top of what every answer costs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp
import orjson

from bench.common import Deadline, base_parser, bench_stack, profiled, report, summary
from bench.facade import bounded, make_user, project_room
from bridge.api.auth import VERIFIER
from bridge.api.messaging import build_content
from bridge.chat.media_urls import media_signer
from bridge.context import DATABASE, EVENT_INDEX, MATRIX
from bridge.db.media import Media, MediaStore
from bridge.matrix.homeserver import q

PAGE = 50
OLDER = 10
# The smallest PNG: the benchmark is about the answer, not the bytes.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d4944415478da63f8cfc0f01f0005000201a5f6d8700000000049454e44ae426082"
)


async def populate(app: Any, room_id: str, users: list[Any]) -> list[str]:
    matrix = app[MATRIX]
    for i in range(OLDER):
        older = {"msgtype": "m.text", "body": f"older {i}"}
        await matrix.send_event(room_id, "m.room.message", older, as_user=users[i % 4].mxid)

    async def image(i: int) -> str:
        user = users[i % 4]
        mxc = await matrix.upload(PNG, "image/png", f"p{i}.png", as_user=user.mxid)
        name = f"{mxc.rsplit('/', 1)[-1]}.png"
        await MediaStore(app[DATABASE]).add(
            Media(mxc, user.crm_user_id, name, f"p{i}.png", "image/png", len(PNG))
        )
        await MediaStore(app[DATABASE]).posted_in(mxc, room_id)
        attachment = {"mxc": mxc, "filename": name, "originalName": f"p{i}.png",
                      "mimetype": "image/png", "size": len(PNG)}  # fmt: skip
        content = build_content("", "image", [attachment])
        return await matrix.send_event(room_id, "m.room.message", content, as_user=user.mxid)

    return [await image(i) for i in range(PAGE)]


async def wait_indexed(app: Any, ids: list[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if len(await app[EVENT_INDEX].get_many(ids)) == len(ids):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("the messages never reached the index")


async def measure(requests: int, deadline: Deadline) -> dict[str, Any]:
    overrides = {"api__rate_limit__requests": 1_000_000}
    async with bench_stack(**overrides) as stack:
        app = stack.app
        users = await bounded(4, [make_user(app, f"m{i}_") for i in range(4)])
        room_id, conversation_id = await project_room(app, users)
        await wait_indexed(app, await populate(app, room_id, users))
        reader = users[0]
        bearer = {"Authorization": f"Bearer {app[VERIFIER].mint(reader.crm_user_id)}"}
        as_auth = {"Authorization": f"Bearer {stack.as_token}"}
        hs = stack.config["homeserver.address"]
        messages_url = f"{hs}/_matrix/client/v3/rooms/{q(room_id)}/messages"
        answer: dict[str, Any] = {}

        async with aiohttp.ClientSession() as session:

            async def facade() -> float:
                start = time.perf_counter()
                url = f"{stack.bridge_url}/api/chat/messages/{conversation_id}"
                async with session.get(url, params={"limit": str(PAGE)}, headers=bearer) as resp:
                    raw = await resp.read()
                elapsed = (time.perf_counter() - start) * 1000
                body = json.loads(raw)
                assert resp.status == 200 and len(body["messages"]) == PAGE, body
                assert all("sig=" in m["attachments"][0]["url"] for m in body["messages"])
                answer["body"] = body
                return elapsed

            async def synapse() -> float:
                params = {"dir": "b", "limit": str(PAGE), "user_id": reader.mxid}
                start = time.perf_counter()
                async with session.get(messages_url, params=params, headers=as_auth) as resp:
                    await resp.read()
                    assert resp.status == 200
                return (time.perf_counter() - start) * 1000

            for _ in range(5):
                await facade()
                await synapse()
            runs: dict[str, list[float]] = {"facade": [], "synapse": []}
            with profiled("media"):
                for i in range(requests):
                    if deadline.passed():
                        break
                    pair = [("facade", facade), ("synapse", synapse)]
                    for kind, call in pair if i % 2 == 0 else pair[::-1]:
                        runs[kind].append(await call())

        # The signing pass alone, on the same answer with its URLs back to bare paths.
        body = answer["body"]
        for message in body["messages"]:
            for attachment in message["attachments"]:
                attachment["url"] = attachment["url"].split("?", 1)[0].split("://", 1)[1]
                attachment["url"] = attachment["url"][attachment["url"].index("/") :]
        encoded = orjson.dumps(body)
        signer = media_signer(app)
        encode, sign = [], []
        for _ in range(200):
            start = time.perf_counter()
            orjson.dumps(body)
            encode.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            signer.sign_json(encoded, reader.crm_user_id)
            sign.append((time.perf_counter() - start) * 1000)
    f, s = summary(runs["facade"]), summary(runs["synapse"])
    e, g = summary(encode), summary(sign)
    return {
        "facade": f,
        "synapse_limit_50": s,
        "p50_ratio": round(f["p50_ms"] / s["p50_ms"], 3),
        "p95_ratio": round(f["p95_ms"] / s["p95_ms"], 3),
        "answer_bytes": len(encoded),
        "encode_ms": e,
        "sign_ms": g,
        "sign_over_encode_p50": round(g["p50_ms"] / e["p50_ms"], 2),
        "samples_ms": {k: [round(x, 2) for x in v] for k, v in runs.items()},
    }


async def main(args: argparse.Namespace) -> None:
    measured = await measure(args.requests, Deadline(args.time_limit))
    results = {"page": PAGE, "files": PAGE, **measured}
    report("GET /messages of 50 files (signed URLs) vs Synapse /messages", results, args.json)


def entry() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--requests", type=int, default=40)
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    entry()
