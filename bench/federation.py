"""Federation benchmark: what the hop to a guest's homeserver costs a CRM socket.

Three Synapses federate on loopback (tests/federation_support.py: ``ours`` with the bridge,
an allowed ``partner``); one project room holds a CRM user's socket (python-socketio,
websocket), a Matrix user on our server (a CRM user's linked account, as Element) and a
guest on the partner server (matrix-nio). Interleaved, so both see the same machine:

* local: from the start of the local Matrix user's ``PUT /send`` to ``new_message`` at the
  CRM socket (our Synapse → appservice transaction → socket);
* guest: from the start of the guest's ``PUT /send`` on their own server to ``new_message``
  at the CRM socket (partner → federation → our Synapse → transaction → socket).

The difference of the p50s is the federation hop. All Synapses run on SQLite here.

    .venv/bin/python -m bench.federation [--samples 30]
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from nio import AsyncClient, JoinResponse, RoomSendResponse

from bench.common import Deadline, base_parser, report, summary
from bridge.api.auth import VERIFIER
from bridge.ids import conversation_id_for_room
from tests.federation_support import federation
from tests.helpers import matrix_user


async def _put(fed: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {fed.config['admin_api.token']}"}
    async with (
        aiohttp.ClientSession() as session,
        session.put(f"{fed.bridge_url}/api/admin/v1{path}", json=body, headers=headers) as resp,
    ):
        data = await resp.json()
        assert resp.status == 200, data
        return data


async def _join(client: AsyncClient, room_id: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        resp = await client.sync(timeout=0)
        if room_id in getattr(getattr(resp, "rooms", None), "invite", {}):
            joined = await client.join(room_id)
            assert isinstance(joined, JoinResponse), joined
            return
        await asyncio.sleep(0.3)
    raise TimeoutError(f"{client.user_id} was never invited to {room_id}")


async def run(samples: int, time_limit: float) -> dict[str, Any]:
    deadline = Deadline(time_limit)
    with tempfile.TemporaryDirectory(prefix="bench-fed-") as tmp:
        async with federation(Path(tmp)) as fed:
            suffix = uuid.uuid4().hex[:8]
            guest = await matrix_user(fed.partner, f"guest{suffix}")
            local = await matrix_user(fed.ours, f"local{suffix}")
            alice, bob = f"a{suffix}", f"b{suffix}"
            for crm_id, name, linked in ((alice, "Alice", None), (bob, "Bob", local.user_id)):
                body: dict[str, Any] = {"name": name, "email": f"{crm_id}@example.com"}
                body.update(role="employee", **({"matrixId": linked} if linked else {}))
                await _put(fed, f"/users/{crm_id}", body)
            project = await _put(
                fed,
                f"/projects/p{suffix}",
                {"name": "Federation bench", "members": [alice, bob], "guests": [guest.user_id]},
            )
            room_id = project["project"]["roomId"]
            await asyncio.gather(
                _join(guest, room_id, time.monotonic() + 60),
                _join(local, room_id, time.monotonic() + 60),
            )
            cid = conversation_id_for_room(room_id)
            arrivals: dict[str, float] = {}
            sio = socketio.AsyncClient(reconnection=False)

            @sio.on("new_message")
            async def on_message(message: dict[str, Any]) -> None:
                if message.get("conversationId") == cid:
                    arrivals.setdefault(str(message.get("content")), time.perf_counter())

            jwt = fed.app[VERIFIER].mint(alice, 3600)
            await sio.connect(fed.bridge_url, auth={"token": jwt}, transports=["websocket"])
            latencies: dict[str, list[float]] = {"local": [], "guest": []}
            try:
                # Warm-up: the first message over federation is the slowest (keys, backoff).
                for side, client in (("guest", guest), ("local", local)):
                    await _one(client, room_id, f"warm {side}", arrivals)
                for i in range(samples):
                    if deadline.passed():
                        break
                    order = [("local", local), ("guest", guest)]
                    for side, client in order if i % 2 == 0 else order[::-1]:
                        took = await _one(client, room_id, f"{side} {i} {suffix}", arrivals)
                        if took is not None:
                            latencies[side].append(took)
            finally:
                await sio.disconnect()
                await guest.close()
                await local.close()
    local_s, guest_s = summary(latencies["local"]), summary(latencies["guest"])
    return {
        "local_send_to_new_message": local_s,
        "guest_send_to_new_message": guest_s,
        "federation_hop_p50_ms": round(guest_s["p50_ms"] - local_s["p50_ms"], 2),
        "ratio_p50": round(guest_s["p50_ms"] / local_s["p50_ms"], 3) if local_s["n"] else None,
        "synapse_db": "sqlite (all three servers)",
    }


async def _one(
    client: AsyncClient, room_id: str, body: str, arrivals: dict[str, float]
) -> float | None:
    start = time.perf_counter()
    sent = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})
    assert isinstance(sent, RoomSendResponse), sent
    limit = time.monotonic() + 30
    while body not in arrivals:
        if time.monotonic() > limit:
            return None
        await asyncio.sleep(0.002)
    return (arrivals[body] - start) * 1000


def main() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    results = asyncio.run(run(args.samples, args.time_limit))
    report("Federation: guest send -> new_message vs a local Matrix user's", results, args.json)


if __name__ == "__main__":
    main()
